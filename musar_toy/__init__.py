"""Toy-world experiments of ComfyUI-MUSAR (docs/TOY_WORLD.md): train the toy FLUX base model,
train the MUSAR dual LoRA through the pack's trainer, evaluate routing through the real ComfyUI
graph. Not part of the node pack; run as ``python -m musar_toy.<script>``."""
