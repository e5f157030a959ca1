#!/usr/bin/env bash
# Installs the Debian packages the tests drive for real: chromium (Playwright), redis-server and prometheus (its
# promtool checks and unit-tests the alert rules in deploy/prometheus/). Tesseract (OCR)
# is installed by `make setup` for the product itself (ingest/ensure_ocr.sh), which `make test` runs first.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "kb: the tests need ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]}) and run make test again" >&2
  exit 1
fi
echo "kb: installing ${missing[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
