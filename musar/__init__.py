"""MUSAR core: pure torch (plus numpy / PIL / pyarrow). Never imports ComfyUI.

Modules: errors (MusarError family), layout (token segments and position ids), routing (static /
dynamic attention routing plans and routed attention), lora (dual-branch LoRA math and file
format) and the training / dataset code. ComfyUI capabilities (its attention function, its model
modules) are passed in as arguments.
"""
