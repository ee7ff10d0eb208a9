"""Training checkpoints: safetensors only, written atomically, the last K kept.

One file per checkpoint, ``<directory>/<name>-step<NNNNNN>.safetensors``::

    lora.<module>.<branch>.down|up    the trainable LoRA factors (fp32)
    optim.<param index>.<name>        optimizer state tensors (AdamW exp_avg, exp_avg_sq, step ...)
    rng.noise                         torch.Generator state (uint8)
    rng.order                         sample-order state (uint8, JSON inside)
    history.loss                      per-step loss (float64)
    metadata "musar.checkpoint"       JSON: format version, step, config, model signature,
                                      data description, processes, optimizer param groups and
                                      non-tensor state, elapsed seconds

Nothing is pickled and nothing is read with torch.load. A file is written to a temporary name
in the same folder and moved into place with os.replace, so a crash never leaves a truncated
checkpoint under a real name; older checkpoints beyond ``keep`` are deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

from ..errors import TrainingError
from ..paths import is_inside

logger = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
META_KEY = "musar.checkpoint"
_STEP = re.compile(r"-step(\d+)\.safetensors$")


@dataclasses.dataclass
class CheckpointState:
    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict()
    noise_rng: torch.Tensor
    order: torch.Tensor
    losses: list[float]
    config: dict
    model: dict
    data: dict
    world: int = 1
    elapsed: float = 0.0


def _pack_optimizer(state_dict: dict) -> tuple[dict, dict]:
    tensors, extra = {}, {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "extra": extra}


def _unpack_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("extra", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_checkpoint(path: Path, state: CheckpointState) -> None:
    from safetensors.torch import save_file

    tensors = {f"lora.{k}": v.detach().float().cpu().contiguous() for k, v in state.params.items()}
    optim, optim_meta = _pack_optimizer(state.optimizer)
    tensors.update(optim)
    tensors["rng.noise"] = state.noise_rng.cpu().contiguous()
    tensors["rng.order"] = state.order.cpu().contiguous()
    tensors["history.loss"] = torch.tensor(state.losses, dtype=torch.float64)
    meta = {"version": CHECKPOINT_VERSION, "step": state.step, "config": state.config,
            "model": state.model, "data": state.data, "world": state.world,
            "elapsed": state.elapsed, "optimizer": optim_meta}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path) -> CheckpointState:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise TrainingError(f"checkpoint '{path}' does not exist: expected a "
                            f"<name>-stepNNNNNN.safetensors file written by a training run") from None
    except Exception as e:  # safetensors / JSON / missing-key errors of several types
        raise TrainingError(f"'{path.name}' is not a MUSAR training checkpoint ({type(e).__name__}: "
                            f"{e}); resume from a file written by a training run "
                            "(<name>-stepNNNNNN.safetensors), not a saved LoRA") from None
    if int(meta.get("version", 0)) > CHECKPOINT_VERSION:
        raise TrainingError(f"checkpoint '{path.name}' has format {meta['version']}; this pack "
                            f"reads up to {CHECKPOINT_VERSION} - update ComfyUI-MUSAR")
    params = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    return CheckpointState(
        step=int(meta["step"]), params=params,
        optimizer=_unpack_optimizer(tensors, meta["optimizer"]),
        noise_rng=tensors["rng.noise"], order=tensors["rng.order"],
        losses=tensors["history.loss"].tolist(), config=meta["config"], model=meta["model"],
        data=meta["data"], world=int(meta.get("world", 1)), elapsed=float(meta.get("elapsed", 0)))


class CheckpointStore:
    """Checkpoints of one run name in one folder; checks the folder is writable up front."""

    def __init__(self, directory, name: str, keep: int = 3):
        if not name or any(c in name for c in "/\\") or name in (".", ".."):
            raise TrainingError(f"checkpoint name {name!r} must be a plain file name (no folders)")
        self.directory, self.name, self.keep = Path(directory).expanduser(), name, int(keep)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.directory, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as e:
            raise TrainingError(f"cannot write checkpoints to '{self.directory}' ({e.strerror or e}): "
                                "expected a writable folder - pick another output folder or fix "
                                "its permissions") from None

    def path_for(self, step: int) -> Path:
        return self.directory / f"{self.name}-step{step:06d}.safetensors"

    def checkpoints(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.directory.glob(f"{glob_escape(self.name)}-step*.safetensors"):
            m = _STEP.search(p.name)
            # a symlink leading out of the run folder is not a checkpoint of this run
            if m and p.name == f"{self.name}-step{m.group(1)}.safetensors" \
                    and p.is_file() and is_inside(p, self.directory):
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(self, state: CheckpointState) -> Path:
        path = self.path_for(state.step)
        write_checkpoint(path, state)
        for _, old in self.checkpoints()[:-self.keep]:
            old.unlink(missing_ok=True)
        logger.info("checkpoint %s", path)
        return path


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
