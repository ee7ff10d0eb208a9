"""MUSAR core: pure torch (plus numpy / PIL / pyarrow). Never imports ComfyUI.

Modules: errors (MusarError family), checks and settings (node settings, declared once), layout
(token segments and position ids), routes (route plans and query groups: which queries see which
keys), planning (settings -> schedule -> one call's plan), attachment (what a routed MODEL
carries), session (run and call state), attention and attention_lse (routed attention),
regions and references (layout regions, routed references), lora and omini (dual-branch LoRA),
flux_forward (the differentiable forward), train/ and data/ (training and datasets). ComfyUI
capabilities (its attention function, its model modules) are passed in as arguments.
"""
