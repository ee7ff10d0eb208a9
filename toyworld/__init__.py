"""Toy world: a synthetic world for measuring MUSAR on a CPU (docs/TOY_WORLD.md).

One package holds the world, its exact measuring instruments, the experiment scripts that train
and evaluate toy models on it, and their weights (``toyworld/weights``). It is not part of the
method (``musar/``); the node pack uses only the codec and the text encoder (``nodes/testing/toy.py``,
MUSAR_ToyWorldLoader, category MUSAR/testing).

World and instruments (pure numpy / torch / PIL / pyarrow; import nothing outside this package):
  world      "slot blocks": identities (two colours + a pattern), slots, scenes, captions, split
  codec      CellCodec: exact linear 16-channel, 8x latent codec of the world's flat cells
  textenc    ToyTextEncoder: deterministic word-embedding text encoder with position terms
  detector   cell reader and scorer (subject right, entangled, leaked cells, counterfactual T / L)
  stats      Wilson intervals, paired bootstrap, exact McNemar
  export     Subjects200K-layout pair parquet (the LoRA's training data)

Stages (run from the repository root; each resumable, inside real ComfyUI via musar_run.runtime):
  python -m toyworld.train_base    base model (scenes + diptychs), then its gate
  python -m toyworld.train_lora    dual LoRA through the pack's trainer (--attention static|dense)
  python -m toyworld.eval          the evaluation table through the real ComfyUI graph
  python -m toyworld.demo          the figure of ``make demo`` (runs its cases)
"""
