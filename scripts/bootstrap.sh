#!/usr/bin/env bash
# Set up everything the project needs on a fresh clone: system libraries (when we may install
# them), a virtual environment in .venv, and the project with all extras. Idempotent: a second
# run only checks. Used by the README's two commands and, through them, by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# sounddevice needs PortAudio; OGG/MP3 decoding uses the libsndfile bundled in the soundfile wheel.
if ! ldconfig -p 2>/dev/null | grep -q libportaudio.so.2; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing libportaudio2 (apt)"
    (apt-get install -y -q libportaudio2 >/dev/null 2>&1) || \
      (apt-get update -q >/dev/null && apt-get install -y -q libportaudio2 >/dev/null)
  else
    echo "bootstrap: libportaudio2 is missing; install it (Debian: sudo apt-get install libportaudio2)" \
         "for live microphone capture. Everything else works without it." >&2
  fi
fi

# The console's real-browser tests drive Debian's Chromium through Playwright (browsers are never
# downloaded); installed here when we may, else those tests are skipped with the reason.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing chromium (apt) for the console's browser tests"
    (apt-get install -y -q chromium >/dev/null 2>&1) || \
      (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)
  else
    echo "bootstrap: chromium is missing; the console's browser tests will be skipped" \
         "(Debian: sudo apt-get install chromium)" >&2
  fi
fi

# espeak-ng speaks the test speech that the edge's privacy test mixes into real recordings (the test
# skips, saying why, without it).
if ! command -v espeak-ng >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing espeak-ng (apt)"
    (apt-get install -y -q espeak-ng >/dev/null 2>&1) || \
      (apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null)
  else
    echo "bootstrap: espeak-ng is missing (Debian: sudo apt-get install espeak-ng); the edge privacy" \
         "test will be skipped." >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.silencio-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing silencio[all] into .venv (first time: ~5 min, ~7 GB)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e '.[all]'
  touch "$stamp"
else
  echo "bootstrap: .venv is up to date"
fi
