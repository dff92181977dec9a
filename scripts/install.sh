#!/usr/bin/env bash
# Install smart-transfer with every extra into ./.venv, plus Debian's Fashion-MNIST package and
# chromium (the report test opens the HTML report in headless chromium).
# Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip warns once per package about local index folders this machine may not have; hide only that.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q -c constraints.txt -e ".[all]"
# Fashion-MNIST from Debian (root only; otherwise smart-transfer downloads it on first use).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -q && $SUDO apt-get install -y -q dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded on first use" >&2
fi
# A C compiler for the fused profiling statistics (built below, else on first use; without
# one, profiling falls back to the slower eager statistics).
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -q && $SUDO apt-get install -y -q gcc libc6-dev; } >/dev/null 2>&1 \
    || echo "note: could not install gcc; profiling will use the slower eager statistics" >&2
fi
# Build the fused statistics now when a compiler is present, so that the first profile is not
# slowed by the compiler and a failure shows here; a failure only warns (profiling then builds
# on first use, or falls back to the eager statistics).
if command -v "${CC:-cc}" >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1; then
  .venv/bin/python -W ignore::RuntimeWarning -m smart_transfer.stats.native --build \
    || echo "warning: could not build the fused statistics now; profiling will build them on first use or use the slower eager statistics" >&2
fi
# Headless chromium for the report's browser test (root only; otherwise that test is skipped).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; } >/dev/null 2>&1 \
    || echo "note: could not install chromium; the report's browser test will be skipped" >&2
fi
