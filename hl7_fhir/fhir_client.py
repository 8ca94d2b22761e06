"""FHIR R4 REST client (httpx, resources parsed with fhir.resources.R4B).

Searches follow ``link[next]`` (only within the server's own base URL, so a token never
leaves it) up to ``page_limit`` pages. Reads are retried with exponential backoff on
connection errors, 429 and 5xx; other 4xx are not (asking again will not help). Creates
are retried only when the server cannot have acted on them (connect failures, 429, 503),
so a retry never stores a result twice.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx
from fhir.resources.R4B import FHIRAbstractModel, get_fhir_model_class
from pydantic import ValidationError

from hl7_fhir.errors import Hl7FhirError
from hl7_fhir.fhir_auth import BearerToken, ClientCredentials

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
NOT_PROCESSED_STATUS = frozenset({429, 503})
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
MAX_RETRY_AFTER_IN_CLIENT_S = 1.0  # a Retry-After this short is waited out here (a lab read has a time budget)

Params = Mapping[str, str | Sequence[str]]


class FhirError(Hl7FhirError):
    """A FHIR request failed: the server is unreachable, answered an error, or sent an invalid resource.
    ``retry_after_s``: how long the server asked to be left alone (Retry-After), when it said."""

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The seconds an HTTP answer's Retry-After asks for (delta-seconds or an HTTP date); None without a readable
    one."""
    value = str(headers.get("retry-after", "") or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _without_query(url: str) -> str:
    """``url`` without its query: what errors and logs may show of a request."""
    return str(httpx.URL(url).copy_with(query=None))


def _outcome_text(response: httpx.Response) -> str:
    """The OperationOutcome's issue codes and severities: its texts may quote the search (the patient's
    identifier), and errors are logged and stored."""
    try:
        body = response.json()
    except ValueError:
        return f"no OperationOutcome ({len(response.content)} bytes)"
    issues = body.get("issue", []) if isinstance(body, dict) else []
    shown = [f"{i.get('severity', '?')} {i.get('code', '?')}" for i in issues if isinstance(i, dict)]
    return "OperationOutcome: " + "; ".join(shown) if shown else f"no OperationOutcome ({len(response.content)} bytes)"


def parse_resource(data: Mapping[str, Any]) -> FHIRAbstractModel:
    """A JSON resource as its fhir.resources.R4B model; FhirError names the type, id and problem."""
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        raise FhirError(f"JSON without resourceType (keys: {sorted(map(str, data))[:8]})")
    try:
        return get_fhir_model_class(resource_type).model_validate(data)
    except ValidationError as exc:  # where and why, never the values: they may name the patient
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False)[:3])
        raise FhirError(f"{resource_type}/{data.get('id', '?')} is not valid R4: {problems}") from None
    except (KeyError, ValueError) as exc:
        raise FhirError(f"{resource_type}/{data.get('id', '?')} is not valid R4: {type(exc).__name__}") from None


def transaction_identity(bundle: FHIRAbstractModel) -> tuple[str, str]:
    """The type and ``system|value`` identifier of a transaction Bundle's first resource, by which
    :meth:`FhirClient.post_transaction_once` knows a Bundle it already stored; FhirError if it has none."""
    body = bundle.model_dump(mode="json", exclude_none=True)
    if body.get("type") != "transaction" or not body.get("entry"):
        raise FhirError(f"post_transaction_once needs a non-empty transaction Bundle, got type {body.get('type')!r}")
    first = body["entry"][0]["resource"]
    identifier = (first.get("identifier") or [{}])[0]
    if not identifier.get("system") or not identifier.get("value"):
        raise FhirError(f"post_transaction_once: the first resource ({first['resourceType']}) needs an identifier")
    return first["resourceType"], f"{identifier['system']}|{identifier['value']}"


def _retired(patient: FHIRAbstractModel) -> bool:
    """Whether the EMR retired a Patient record: inactive, or replaced by another (a merge)."""
    return patient.active is False or any(link.type == "replaced-by" for link in patient.link or [])


class FhirClient:
    """Synchronous FHIR R4 client; thread-safe (one httpx.Client with a connection pool)."""

    def __init__(self, base_url: str, *, auth: BearerToken | ClientCredentials | None = None,
                 timeout_s: float = 5.0, retries: int = 2, backoff_s: float = 0.2, page_limit: int = 20,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep):
        if not base_url.startswith(("http://", "https://")):
            raise FhirError(f"FhirClient.base_url must be an http(s) URL, got {base_url!r}")
        if retries < 0 or page_limit < 1 or timeout_s <= 0:
            raise FhirError(f"FhirClient needs retries >= 0, page_limit >= 1, timeout_s > 0; got "
                            f"{retries}, {page_limit}, {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self._retries = retries
        self._backoff = backoff_s
        self._page_limit = page_limit
        self._sleep = sleep
        self._http = httpx.Client(auth=auth, timeout=timeout_s, transport=transport,
                                  headers={"Accept": FHIR_JSON})

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    def _request(self, method: str, url: str, *, params: Params | None = None,
                 json: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One request with retries; the JSON body of a 2xx answer."""
        headers = {"Content-Type": FHIR_JSON} if json is not None else None
        idempotent = method == "GET"
        retry_status = RETRY_STATUS if idempotent else NOT_PROCESSED_STATUS
        where = _without_query(url)  # a search's parameters (and a next-page link's) name the patient
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            wait: float | None = None  # what the server's Retry-After asks for
            try:
                response = self._http.request(method, url, params=params, json=json, headers=headers)
            except httpx.TransportError as exc:
                if last or not (idempotent or isinstance(exc, NOT_SENT_ERRORS)):
                    raise FhirError(f"FHIR {method} {where} failed after {attempt + 1} attempts: "
                                    f"{type(exc).__name__}: {exc}") from exc
                log.info("FHIR %s %s: %s, retrying", method, where, type(exc).__name__)
            else:
                if response.is_success:
                    try:
                        return dict(response.json())
                    except ValueError as exc:
                        raise FhirError(f"FHIR {method} {where} answered non-JSON ({len(response.content)} bytes, "
                                        f"{response.headers.get('content-type', 'no content type')})",
                                        response.status_code) from exc
                wait = retry_after_s(response.headers)
                if response.status_code not in retry_status or last or (wait or 0.0) > MAX_RETRY_AFTER_IN_CLIENT_S:
                    # a server asking for a longer pause is left alone: a delivery is tried again that much later
                    raise FhirError(f"FHIR {method} {where} answered {response.status_code}: "
                                    f"{_outcome_text(response)}", response.status_code, wait)
                log.info("FHIR %s %s answered %d, retrying", method, where, response.status_code)
            self._sleep(max(self._backoff * 2 ** attempt, wait or 0.0))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def search(self, resource_type: str, params: Params, *, lenient: bool = False) -> list[FHIRAbstractModel]:
        """Every match of a search (``params`` as in the FHIR spec, e.g. ``_count``, ``_sort``), all pages
        (``lenient``: see ``iter_search``)."""
        return list(self.iter_search(resource_type, params, lenient=lenient))

    def iter_search(self, resource_type: str, params: Params, *, lenient: bool = False,
                    max_pages: int | None = None,
                    on_invalid: Callable[[Mapping[str, Any], FhirError], None] | None = None,
                    ) -> Iterator[FHIRAbstractModel]:
        """The matches of a search, fetched a page at a time as they are consumed, so a caller that has what it
        needs stops early; at most ``max_pages`` pages when given, else an error past the page limit.

        A resource that is not valid R4 raises FhirError, or with ``lenient`` is left out (logged without its
        values) and the valid ones beside it are kept; ``on_invalid`` is then handed its JSON and the error, for a
        caller to whom a left-out resource still means something (the newest result of a lab). Identity checks
        (one Patient per identifier, a report already stored) must see every match, so they stay strict."""
        url: str | None = f"{self.base_url}/{resource_type}"
        page_params: Params | None = params
        for page in range(self._page_limit):
            assert url is not None
            bundle = self._request("GET", url, params=page_params)
            for entry in bundle.get("entry", []):
                if entry.get("search", {}).get("mode", "match") == "match" and "resource" in entry:
                    try:
                        resource = parse_resource(entry["resource"])
                    except FhirError as exc:
                        if not lenient:
                            raise
                        log.warning("FHIR search %s: left out %s", resource_type, exc)
                        if on_invalid is not None:
                            on_invalid(entry["resource"], exc)
                        continue
                    yield resource
            url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            if url is None or page + 1 == max_pages:
                return
            if not url.startswith(self.base_url + "/"):
                raise FhirError(f"next page {_without_query(url)} is outside the FHIR base {self.base_url}; "
                                "not followed")
            page_params = None
        raise FhirError(f"FHIR search {resource_type} has more than {self._page_limit} pages; "
                        f"narrow it or raise page_limit")

    def read(self, resource_type: str, resource_id: str) -> FHIRAbstractModel:
        """One resource by id."""
        return parse_resource(self._request("GET", f"{self.base_url}/{resource_type}/{resource_id}"))

    def local_id(self, reference: str, resource_type: str) -> str | None:
        """The id of a ``resource_type`` that ``reference`` names on this server ('Type/id' or this base's URL, a
        version left off); None for another server's, a contained one or another type."""
        relative = reference.removeprefix(self.base_url + "/").split("/_history/")[0].rstrip("/")
        kind, _, ident = relative.partition("/")
        return ident if kind == resource_type and ident and "/" not in ident else None

    def find_patient(self, identifier_system: str, value: str) -> FHIRAbstractModel | None:
        """The one Patient with identifier ``system|value``; None if none; FhirError if several. A record the EMR
        has retired (``active`` false, or linked as ``replaced-by`` another after a merge) is not a candidate when
        an active one shares the identifier; when only retired ones do, their ``replaced-by`` link is followed, one
        hop on this server, to the surviving record (FhirError when it cannot be: the retired record's emptied lists
        must not read as the patient's)."""
        matches = self.search("Patient", {"identifier": f"{identifier_system}|{value}"})
        current = [p for p in matches if not _retired(p)]
        links = [link.other.reference or "" for p in matches for link in p.link or [] if link.type == "replaced-by"]
        if current or not links:
            matches = current or matches
            if len(matches) > 1:
                raise FhirError(f"{len(matches)} Patients share identifier system {identifier_system}; "
                                f"refusing to guess which one is the study's patient")
            return matches[0] if matches else None
        where = f"the Patient with an identifier in system {identifier_system} was retired, replaced by"
        targets = {self.local_id(link, "Patient") for link in links}
        if len(targets) > 1 or None in targets:
            raise FhirError(f"{where} other than one Patient on this server: the link cannot be followed")
        try:
            survivor = self.read("Patient", str(targets.pop()))
        except FhirError as exc:
            raise FhirError(f"{where} a record that cannot be read: {exc}", exc.status, exc.retry_after_s) from exc
        if _retired(survivor):
            raise FhirError(f"{where} a record itself retired; one link is followed, not a chain")
        return survivor

    def create(self, resource: FHIRAbstractModel) -> FHIRAbstractModel:
        """POST a new resource; the server's copy (with id) comes back."""
        body = resource.model_dump(mode="json", exclude_none=True)
        return parse_resource(self._request("POST", f"{self.base_url}/{body['resourceType']}", json=body))

    def post_transaction_once(self, bundle: FHIRAbstractModel) -> FHIRAbstractModel | None:
        """POST a transaction Bundle unless its first resource is already stored (a retried delivery).

        The first entry's resource is looked up by its first identifier; when it exists, nothing is
        posted and None comes back, otherwise the transaction-response Bundle. A transaction is
        atomic, so that one lookup tells whether all of its resources were stored.
        """
        resource_type, token = transaction_identity(bundle)
        if self.search(resource_type, {"identifier": token}):
            return None
        return self.post_bundle(bundle)

    def post_bundle(self, bundle: FHIRAbstractModel) -> FHIRAbstractModel:
        """POST a transaction/batch Bundle to the base URL; the transaction-response Bundle comes back."""
        body = bundle.model_dump(mode="json", exclude_none=True)
        if body.get("resourceType") != "Bundle" or body.get("type") not in ("transaction", "batch"):
            raise FhirError(f"post_bundle needs a transaction or batch Bundle, got "
                            f"{body.get('resourceType')} type {body.get('type')!r}")
        return parse_resource(self._request("POST", self.base_url, json=body))
