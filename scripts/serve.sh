#!/usr/bin/env bash
# `make serve`: the real ComfyUI server with this pack loaded and the real frontend, on
# 127.0.0.1:${PORT:-8188}. Models, inputs and outputs live in ${MUSAR_BASE:-.cache/serve}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # COMFYUI_PATH picks another ComfyUI
"$ROOT/scripts/setup.sh"
VENV="$MUSAR_VENV"
COMFY="$(cat "$VENV/.musar-comfyui-path")"
BASE="${MUSAR_BASE:-$ROOT/.cache/serve}"
mkdir -p "$BASE/custom_nodes"
ln -sfn "$ROOT" "$BASE/custom_nodes/ComfyUI-MUSAR"
cd "$COMFY"
exec "$VENV/bin/python" main.py --cpu --listen 127.0.0.1 --port "${PORT:-8188}" \
  --base-directory "$BASE" --database-url "sqlite:///:memory:" --disable-api-nodes "$@"
