#!/usr/bin/env bash
# `make demo`: workflows/musar_two_subjects.json headless through real ComfyUI, images to output/.
#
#   scripts/demo.sh                                  # tiny random FLUX stand-ins (CPU, seconds)
#   scripts/demo.sh --models /path/to/ComfyUI/models # real FLUX.1 files (same workflow)
#   scripts/demo.sh --unet F --clip-l F --t5 F --vae F --lora F
#
# Without arguments the model loaders are replaced by MUSAR_TinyFluxLoader (--tiny): the run
# shows that the whole pipeline works (subjects, routing, sampling, routing overlay); the random
# stand-ins make noise, not pictures. Extra arguments go to `python -m musar_run` (see
# docs/RUNNING.md); OUTPUT=dir changes the output folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
PY="${MUSAR_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
[ $# -gt 0 ] || set -- --tiny
exec "$PY" -m musar_run workflows/musar_two_subjects.json --output "${OUTPUT:-output}" "$@"
