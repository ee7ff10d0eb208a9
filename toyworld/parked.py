"""Training checkpoints parked in the repository, so that a base training longer than one working
session continues on another machine instead of starting again (``.cache`` is not committed).

    python -m toyworld.parked park .cache/toyworld/refbase/run/refbase_ckpt.safetensors
    python -m toyworld.parked drop refbase_ckpt.safetensors     # once the training has finished

``park`` copies a work folder's checkpoint (and the interim gates beside it, ``gates.jsonl``) into
``toyworld/checkpoints/``. A training whose work folder has no checkpoint takes the parked one of
the same file name, but only when it was written with the same settings (``train_base.run_loop``);
a run with other settings (a smoke run, another size) starts from scratch as before. Only the
multi-reference base is ever parked: its checkpoint with the AdamW state is 29 MB; the medium
base's 94 MB are too much for every user's clone, so that one is trained within one session.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .common import ROOT

FOLDER = ROOT / "toyworld" / "checkpoints"
GATES = "gates.jsonl"


def _gates_of(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + "_" + GATES)


def settings_of(checkpoint: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(checkpoint), "pt") as f:
        return json.loads(f.metadata()["settings"])


def park(checkpoint: Path, folder: Path = FOLDER) -> Path:
    """Copy a work folder's checkpoint and its interim gates into ``folder``; returns the copy."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / checkpoint.name
    shutil.copyfile(checkpoint, target)
    gates = checkpoint.parent / GATES
    if gates.is_file():
        shutil.copyfile(gates, _gates_of(target))
    return target


def unpark(checkpoint: Path, settings: dict, folder: Path = FOLDER) -> bool:
    """Put the parked copy of ``checkpoint`` in its place when the work folder has none and the copy
    was written with ``settings``; True when it did."""
    parked = folder / checkpoint.name
    if checkpoint.is_file() or not parked.is_file() or settings_of(parked) != settings:
        return False
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if _gates_of(parked).is_file():
        shutil.copyfile(_gates_of(parked), checkpoint.parent / GATES)
    shutil.copyfile(parked, checkpoint)
    return True


def drop(name: str, folder: Path = FOLDER) -> None:
    for path in (folder / name, _gates_of(folder / name)):
        path.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("park", "drop"):
        print(__doc__)
        return 2
    if argv[0] == "park":
        print(park(Path(argv[1])))
    else:
        drop(Path(argv[1]).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
