#!/usr/bin/env bash
# OCR needs Debian's tesseract-ocr and its English model (ingest/parsers/ocr.py): install them when missing
# (as root, with apt-get), or refuse in one line saying what to install.
set -euo pipefail
missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
if ! tesseract --list-langs 2>/dev/null | grep -qx eng; then missing+=(tesseract-ocr-eng); fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "kb: OCR needs ${missing[*]}; install it (Debian: sudo apt-get install ${missing[*]}) and run make again" >&2
  exit 1
fi
echo "kb: installing ${missing[*]} (OCR) from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
