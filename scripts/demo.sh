#!/usr/bin/env bash
# `make demo`: workflows/musar_two_subjects.json headless through real ComfyUI, images to output/.
#
#   scripts/demo.sh                                  # the trained toy-world model (CPU, seconds)
#   scripts/demo.sh --tiny                           # random tiny FLUX stand-ins (pipeline check)
#   scripts/demo.sh --models /path/to/ComfyUI/models # real FLUX.1 files (same workflow)
#   scripts/demo.sh --unet F --clip-l F --t5 F --vae F --lora F
#
# Without arguments the model loaders are replaced by MUSAR_ToyWorldLoader (--toy): the toy FLUX
# of docs/TOY_WORLD.md with its static-trained toy MUSAR LoRA; the two Subject nodes get two
# held-out toy subjects (reference images; captions and prompt never name their colours). Then
# `python -m toyworld.demo` runs six fixed held-out four-subject cases through the shipped
# four-subject workflow without routing (the LoRA trained without it), with static routing and as
# shipped, plus Route References off / on on the multi-reference toy base when its weights are
# there, scores every image with the toy detector and writes output/toy_demo.png (the grid and the
# tallies) and output/toy_demo.json. Extra arguments go to
# `python -m musar_run` (see docs/RUNNING.md), e.g. DEMO_ARGS="--set 11.seed=7" keeps the toy model;
# OUTPUT=dir changes the output folder; DEMO_QUICK=1 runs one case per panel of the figure (a
# smoke run: .ci/run on the second ComfyUI version).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # COMFYUI_PATH picks another ComfyUI
"$ROOT/scripts/setup.sh"
cd "$ROOT"
OUT="${OUTPUT:-output}"
mode=--toy  # unless the arguments pick models themselves
for a in "$@"; do
  case "$a" in --tiny|--toy|--models|--models=*|--unet*|--clip-l*|--t5*|--vae*|--lora*) mode= ;; esac
done
"$PY" -m musar_run workflows/musar_two_subjects.json --output "$OUT" $mode "$@"
if [ -n "$mode" ]; then
  "$PY" -m toyworld.demo "$OUT" ${DEMO_QUICK:+--quick}
fi
