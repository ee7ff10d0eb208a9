"""The test and demo nodes (category ``MUSAR/testing``), kept apart from the product nodes:
stand-in models built from ComfyUI's own classes (``standins``, ``qwen``; the MUSAR Tiny FLUX
Stand-ins node in ``loaders``) and the toy world's loader (``toy``: MUSAR Toy World Loader, used
by ``make demo`` and the toy evaluation). The tests, the benches, ``--tiny`` and the toy world use
them; nothing in the product nodes does."""

from . import loaders, toy

NODES = [*loaders.NODES, *toy.NODES]
