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
# held-out toy subjects (reference images; captions and prompt never name their colours). The
# workflow runs twice - as shipped (static + dynamic routing) and with routing off on the LoRA
# trained without routing (output/no_routing) - and `python -m toyworld.demo` puts references,
# both images and the route side by side in output/toy_demo.png. Extra arguments go to
# `python -m musar_run` (see docs/RUNNING.md), e.g. DEMO_ARGS="--set 11.seed=7" keeps the toy model;
# OUTPUT=dir changes the output folder.
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
if [ -n "$mode" ] && [ -f toyworld/weights/toy_lora_dense.safetensors ]; then
  "$PY" -m musar_run workflows/musar_two_subjects.json --output "$OUT/no_routing" --toy \
    --set MUSAR_ApplyRouting.static_routing=false --set MUSAR_ApplyRouting.dynamic_routing=false \
    --set MUSAR_LoadDualLoRA.lora_name=toy_lora_dense.safetensors "$@"
  "$PY" -m toyworld.demo "$OUT"
fi
