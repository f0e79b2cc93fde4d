#!/usr/bin/env bash
# Obtain Fashion-MNIST: the Debian package when apt is usable, else the official download
# into ~/.cache/sslpoison (via `sslpoison fetch`). Quick when the data is already present.
set -euo pipefail
PY=${1:-python3}
if "$PY" -m sslpoison.cli datasets --check fashion-mnist >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
     || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; then
    "$PY" -m sslpoison.cli datasets --check fashion-mnist && exit 0
  fi
fi
"$PY" -m sslpoison.cli fetch fashion-mnist
