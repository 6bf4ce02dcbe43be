#!/usr/bin/env bash
# Set up a fresh machine for tagtune: a virtual environment with the CPU build of torch and every extra,
# plus the Debian packages the demo and the browser test use (installed when apt-get is available).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]} (apt-get)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
      || echo "setup: apt-get failed; the demo falls back to its built-in voice, browser tests will say why they skip"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.tagtune-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # The CPU wheel; an unpinned torch could pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0}"
  "$VENV/bin/pip" install -q -e ".[dev]"
  touch "$stamp"
fi
echo "setup: ready ($VENV)"
