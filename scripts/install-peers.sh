#!/usr/bin/env bash
# Installs the real peers the tests run against (Debian packages, and the FHIR peer from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(dcmtk orthanc dicom3tools postgresql nodejs npm)
commands=(storescu Orthanc dciodvfy pg_ctlcluster node npm)
missing=()
for i in "${!commands[@]}"; do
  command -v "${commands[$i]}" >/dev/null 2>&1 || missing+=("${packages[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Orthanc's Debian package starts a system service on 4242/8042; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"; $sudo systemctl stop orthanc
fi
if [ -f tests/fhir_peer/package-lock.json ] && [ ! -d tests/fhir_peer/node_modules ]; then
  npm ci --prefix tests/fhir_peer --no-audit --no-fund --loglevel=error
fi
