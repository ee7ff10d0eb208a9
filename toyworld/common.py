"""What every toy-world script shares: the ComfyUI runtime with the pack loaded, the toy
encoders as ComfyUI objects, paths, atomic safetensors writes and a small log.

Scripts run inside real ComfyUI (``musar_run.runtime``): the base model is a ComfyUI Flux built
by ``nodes.testing.standins``, the VAE / CLIP are the ``MUSAR_ToyWorldLoader`` objects of ``nodes.testing.toy``,
so the tensors a script trains on are exactly what the inference graph computes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = ROOT / "toyworld" / "weights"
CACHE_DIR = ROOT / ".cache" / "toyworld"
BASE_SIZES = ("small", "medium")  # the toy base model's sizes (their shapes: train_base.SIZES)
DEFAULT_SIZE = "medium"  # the base that passes its gate; the committed demo models are its chain's
logger = logging.getLogger("toyworld")


def run_folders(size: str) -> tuple[Path, Path]:
    """(weights folder, work folder) of the toy-world chain of one base size, both in the cache.
    The committed folder toyworld/weights is written only by ``python -m toyworld.replication
    commit-weights`` (fp16 copies of the medium chain's files), so no training overwrites it."""
    return CACHE_DIR / size / "weights", CACHE_DIR / size


def setup(threads: int | None = None, base_dir: str | os.PathLike | None = None):
    """Bootstrap ComfyUI (CPU), load the pack; returns the pack module."""
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # appended: ComfyUI's nodes.py must win over our nodes/
    import torch

    from musar_run import runtime

    if threads:
        torch.set_num_threads(threads)
    runtime.bootstrap(base_dir=base_dir)
    return runtime.load_pack(ROOT)


def module(pack, name: str):
    """A pack submodule as ComfyUI loaded it (``nodes.testing.toy``, ``musar.flux_forward`` ...)."""
    from musar_run import runtime

    return runtime.pack_module(pack, name)


def log_setup(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)


def loss_curve(losses: list[float], max_window: int) -> dict:
    """The log fields of a loss history: window means every ``window`` steps (window = a tenth of
    the run, at most ``max_window``), first / last window, the window size."""
    window = max(1, min(max_window, len(losses) // 10))
    curve = [{"step": s, "loss": round(sum(losses[s - window:s]) / window, 5)}
             for s in range(window, len(losses) + 1, window)]
    return {"loss_first": curve[0]["loss"] if curve else None, "loss_last": curve[-1]["loss"] if curve else None,
            "curve_window": window, "curve": curve}


def run_script(parse, work, argv=None) -> int:
    """``main`` of a toy script: parse, set up logging, run."""
    args = parse(argv)
    log_setup(args.verbose)
    work(args)
    return 0


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """Atomic write: temporary name in the same folder, then os.replace. The header's metadata is
    written with sorted keys: the safetensors library keeps metadata in a hash map whose order changes
    from process to process, so the same tensors and metadata would otherwise give other bytes
    (and another digest in the records) on every run."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    with tmp.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header, data = json.loads(f.read(size)), f.read()
    if "__metadata__" in header:  # the tensors' entries are already in a fixed order
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format's 8-byte alignment of the data
    with tmp.open("wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)
    os.replace(tmp, path)


def write_json(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


class Clock:
    """Wall-clock seconds, accumulated over resumed runs."""

    def __init__(self, already: float = 0.0):
        self.start, self.already = time.perf_counter(), float(already)

    def __call__(self) -> float:
        return self.already + time.perf_counter() - self.start
