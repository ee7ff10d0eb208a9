#!/usr/bin/env bash
# Idempotent setup for the real-browser tests (tests/browser): Chromium from Debian packages and
# Playwright for Python in the runtime venv. Playwright drives the system Chromium
# (executable_path=/usr/bin/chromium); `playwright install` is never run and nothing is
# downloaded when both are present (a second run takes well under a second).
#
# The browser tier also runs against the newest ComfyUI frontend on the registry (NEW_FRONTEND,
# served with `main.py --front-end-root`). It goes into a git-ignored folder with
# `pip --no-deps --target`, never into the venv: the venv keeps the 1.32.9 that ComfyUI 0.3.75 pins.
#
#   scripts/setup_browser.sh        # after scripts/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MUSAR_VENV:-$ROOT/.venv}"
CHROMIUM="${MUSAR_CHROMIUM:-/usr/bin/chromium}"
NEW_FRONTEND="1.58.1"
NEW_FRONTEND_DIR="${MUSAR_NEW_FRONTEND_DIR:-$ROOT/.comfyui/frontend-$NEW_FRONTEND}"

log() { printf '[setup_browser] %s\n' "$*" >&2; }

if ! "$CHROMIUM" --version >/dev/null 2>&1; then
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "need root (or sudo) to apt-get install chromium"; exit 2; }
    SUDO=(sudo)
  fi
  log "installing chromium + chromium-driver (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null
  fi
fi

[ -x "$VENV/bin/python" ] || { log "no venv at $VENV: run scripts/setup.sh first"; exit 2; }
if ! "$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null; then
  log "installing playwright (Python package only; it drives $CHROMIUM)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q playwright
fi
if [ ! -f "$NEW_FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
  log "installing comfyui-frontend-package==$NEW_FRONTEND into $NEW_FRONTEND_DIR (not the venv)"
  rm -rf "$NEW_FRONTEND_DIR"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --target "$NEW_FRONTEND_DIR" \
    "comfyui-frontend-package==$NEW_FRONTEND"
fi
log "ready: $("$CHROMIUM" --version 2>/dev/null | head -1), playwright $("$VENV/bin/python" -c \
  'from importlib.metadata import version; print(version("playwright"))')"
