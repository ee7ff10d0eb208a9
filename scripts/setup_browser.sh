#!/usr/bin/env bash
# Idempotent setup for the real-browser tests (tests/browser): Chromium from Debian packages and
# Playwright for Python in the runtime venv. Playwright drives the system Chromium
# (executable_path=/usr/bin/chromium); `playwright install` is never run and nothing is
# downloaded when both are present (a second run takes well under a second).
#
# The browser tier runs every frontend in FRONTENDS (0.3.75's pin, 0.33.0's pin and the newest on
# the registry) besides the one in the venv. Each goes into a git-ignored folder
# .comfyui/frontend-<version> with `pip --no-deps --target`, never into the venv (served with
# `main.py --front-end-root`); the venv keeps the frontend its ComfyUI pins.
#
#   scripts/setup_browser.sh        # after scripts/setup.sh
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
VENV="$MUSAR_VENV"
CHROMIUM="${MUSAR_CHROMIUM:-/usr/bin/chromium}"
FRONTENDS="1.32.9 1.49.6 1.58.1"  # keep in step with tests/browser/conftest.py

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
IN_VENV="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("comfyui-frontend-package"))')"
for v in $FRONTENDS; do
  dir="$ROOT/.comfyui/frontend-$v"
  if [ "$v" != "$IN_VENV" ] && [ ! -f "$dir/comfyui_frontend_package/static/index.html" ]; then
    log "installing comfyui-frontend-package==$v into $dir (not the venv)"
    rm -rf "$dir"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --target "$dir" \
      "comfyui-frontend-package==$v"
  fi
done
log "ready: $("$CHROMIUM" --version 2>/dev/null | head -1), playwright $("$VENV/bin/python" -c \
  'from importlib.metadata import version; print(version("playwright"))')"
