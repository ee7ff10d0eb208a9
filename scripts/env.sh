#!/usr/bin/env bash
# Which ComfyUI and which venv a developer command uses; sourced by every script in scripts/.
#
#   (nothing set)          ComfyUI 0.3.75 from the registry in .comfyui/0.3.75, venv .venv
#   COMFYUI_PATH=<dir>     that ComfyUI checkout, with its own venv .venvs/<name>-<hash of path>
#                          (built from its requirements.txt), kept apart from .venv
#   MUSAR_VENV=<dir>       overrides the venv in both cases
#
# Sets and exports ROOT, COMFY_DIR, MUSAR_VENV; sets PY. Run directly, it prints one of them:
#   scripts/env.sh --python | --venv | --comfyui
PINNED_COMFYUI="0.3.75"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFY_DIR="$(cd "$COMFYUI_PATH" 2>/dev/null && pwd || printf '%s' "$COMFYUI_PATH")"
  _tag="$(basename "$COMFY_DIR")-$(printf '%s' "$COMFY_DIR" | sha256sum | cut -c1-8)"
  MUSAR_VENV="${MUSAR_VENV:-$ROOT/.venvs/$_tag}"
  unset _tag
else
  COMFY_DIR="$ROOT/.comfyui/$PINNED_COMFYUI"
  MUSAR_VENV="${MUSAR_VENV:-$ROOT/.venv}"
fi
PY="$MUSAR_VENV/bin/python"
export ROOT COMFY_DIR MUSAR_VENV

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    --python) echo "$PY" ;;
    --venv) echo "$MUSAR_VENV" ;;
    --comfyui) echo "$COMFY_DIR" ;;
    *) echo "usage: scripts/env.sh --python | --venv | --comfyui" >&2; exit 2 ;;
  esac
fi
