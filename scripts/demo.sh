#!/usr/bin/env bash
# `make demo`: workflows/musar_two_subjects.json headless through real ComfyUI, images to output/.
#
#   scripts/demo.sh                                  # the trained toy-world model (CPU, seconds)
#   scripts/demo.sh --tiny                           # random tiny FLUX stand-ins (pipeline check)
#   scripts/demo.sh --models /path/to/ComfyUI/models # real FLUX.1 files (same workflow)
#   scripts/demo.sh --unet F --clip-l F --t5 F --vae F --lora F
#
# Without arguments the model loaders are replaced by MUSAR_ToyWorldLoader (--toy): the toy
# FLUX trained in docs/TOY_WORLD.md with its toy MUSAR LoRA; the Subject nodes get two held-out
# toy subjects (rendered reference images) and the prompt names them, so the image shows the
# chosen subjects and the routing overlay where each one went. Extra arguments go to
# `python -m musar_run` (see docs/RUNNING.md), e.g. DEMO_ARGS="--set 11.seed=7" keeps the toy model;
# OUTPUT=dir changes the output folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
PY="${MUSAR_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
mode=--toy  # unless the arguments pick models themselves
for a in "$@"; do
  case "$a" in --tiny|--toy|--models|--models=*|--unet*|--clip-l*|--t5*|--vae*|--lora*) mode= ;; esac
done
exec "$PY" -m musar_run workflows/musar_two_subjects.json --output "${OUTPUT:-output}" $mode "$@"
