#!/usr/bin/env bash
# Set up a fresh machine for tagtune: a virtual environment with torch (see below for which build) and every
# extra, plus the Debian packages the demo and the browser test use (installed when apt-get is available).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)  # the web page's streamed playback (gradio encodes with it)
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
  # torch first, pinned. Which build arrives depends on where pip looks, not on the machine: from PyPI,
  # torch 2.13.0 for Linux x86_64 is the CUDA build (several GB with its NVIDIA libraries; it uses the GPU of a
  # GPU machine and runs on the CPU of a machine without one). The CPU-only build (a 190 MB wheel) comes from
  # a folder of CPU wheels pip is configured with (find-links), or from the index named by TORCH_INDEX_URL:
  #   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make test
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$VENV/bin/pip" install -q --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION:-2.13.0}"
  else
    "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0}"
  fi
  "$VENV/bin/pip" install -q -e ".[dev]"
  touch "$stamp"
fi
echo "setup: ready ($VENV)"
