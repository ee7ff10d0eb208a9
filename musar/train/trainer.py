"""The training loop: debiased diptych learning of the dual-branch LoRA (docs/METHOD.md).

    trainer = Trainer(dm, training_set, encoders, TrainConfig(steps=1000), cache_dir=...,
                      store=CheckpointStore(folder, "my_lora"))
    result = trainer.run(Callbacks(should_stop=..., on_step=..., validate=...), resume="latest")
    result.lora          # DualLoRA (detached copy, file metadata filled in)

Only the LoRA factors are trainable; the base model runs frozen (``frozen_base``) through
``musar_forward``. One optimizer step = batch_size x grad_accumulation samples per process (see
samples.py for how samples of different layouts are batched); gradients are averaged over
processes (distributed.py). Every random choice comes from the run's own generators (rng.py),
which a checkpoint stores, so a resumed run continues bit-identically on the same hardware.

Cancel: ``Callbacks.should_stop`` is asked before every step; besides, the host may raise one of
``Callbacks.interrupts`` from inside any forward (ComfyUI raises its InterruptProcessingException
in every op). A step changes the run's state (LoRA, optimizer, generators, history) only after
its last forward / backward, so an interrupt inside a step rewinds the two generators to the
step's start and the run stops at the last finished step, which is checkpointed (atomically,
checkpoint.py) like any other: resuming it continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import DatasetError, TrainingError
from ..lora import DualLoRA, from_trainable, from_trainable_live, init_trainable
from .checkpoint import CheckpointState, CheckpointStore, read_checkpoint
from .config import TrainConfig, trajectory_differences
from .distributed import Dist
from .flow import batch_loss, check_plain, frozen_base, model_signature
from .history import LossHistory
from .rng import SampleOrder, noise_generator, sample_seeds
from .samples import EncodedSample, Encoders, SampleEncoder, TrainingSet, collate, group_by_layout

logger = logging.getLogger(__name__)
MEMORY_BUDGET = 1 << 30  # bytes of encoded samples kept in memory between pre-encoding and use


@dataclasses.dataclass(frozen=True)
class StepInfo:
    step: int
    total: int
    loss: float
    smoothed: float
    lr: float
    elapsed: float


def _never() -> bool:
    return False


@dataclasses.dataclass
class Callbacks:
    """Hooks of the ComfyUI side / CLI. ``validate(lora, step)`` returns a preview (any object)."""

    should_stop: Callable[[], bool] = _never
    on_step: Callable[[StepInfo], None] | None = None
    validate: Callable[[DualLoRA, int], object] | None = None
    before_training: Callable[[], None] | None = None
    on_checkpoint: Callable[[Path, int], None] | None = None
    interrupts: tuple[type[BaseException], ...] = ()  # raised by the host to cancel mid-step


@dataclasses.dataclass
class TrainResult:
    lora: DualLoRA
    history: LossHistory
    step: int
    stopped: bool
    checkpoint: Path | None
    preview: object | None
    elapsed: float


class Trainer:
    def __init__(self, dm, data: TrainingSet, encoders: Encoders, config: TrainConfig, *,
                 cache_dir, store: CheckpointStore | None = None, device=None,
                 dtype: torch.dtype = torch.float32, dist: Dist | None = None, base_model: str = ""):
        self.dm, self.data, self.config, self.store = dm, data, config, store
        self.dist = dist or Dist()
        self.device = torch.device(device) if device is not None else _device_of(dm)
        self.dtype, self.base_model = dtype, base_model
        self._check_inputs()
        self.signature = model_signature(dm)
        self.encoder = SampleEncoder(encoders, cache_dir)
        self._memory: dict[int, EncodedSample] = {}
        self._memory_bytes = 0

    def _check_inputs(self) -> None:
        check_plain(self.dm)
        n, need, hidden = len(self.data), self.config.samples_per_step(self.dist.world), self.dm.hidden_size
        if n == 0:
            raise DatasetError("the training dataset is empty: expected at least one usable sample")
        if need > n:
            raise TrainingError(f"one step needs {need} samples (batch_size {self.config.batch_size} x "
                                f"grad_accumulation {self.config.grad_accumulation} x {self.dist.world} processes) "
                                f"but the dataset has {n}: lower batch_size or add data")
        for name in ("noisy_rank", "subject_rank"):
            rank = getattr(self.config, name)
            if rank > hidden:
                raise TrainingError(f"{name} {rank} is larger than the model width {hidden}: a LoRA "
                                    f"rank must be at most the hidden size (FLUX.1: 3072; defaults "
                                    f"4 / 64) - lower it")

    # ---- state ------------------------------------------------------------------------------
    def _fresh(self) -> None:
        cfg = self.config
        shapes = {k: tuple(v) for k, v in self.signature["shapes"].items()}
        self.params = {k: torch.nn.Parameter(v.to(self.device))
                       for k, v in init_trainable(shapes, cfg.noisy_rank, cfg.subject_rank, cfg.seed).items()}
        self.optimizer = _make_optimizer(list(self.params.values()), cfg)
        self.order = SampleOrder(len(self.data), cfg.seed)
        self.noise = noise_generator(cfg.seed)
        self.history = LossHistory(cfg.smoothing)
        self.step, self.elapsed_before = 0, 0.0

    def _resume(self, resume) -> Path | None:
        path = self._resume_path(resume)
        if path is None:
            return None
        state = read_checkpoint(path)
        self._check_compatible(state, path)
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state.params[k].to(p))
        self.optimizer.load_state_dict(state.optimizer)
        self.noise.set_state(state.noise_rng)
        self.order.restore(state.order)
        self.history = LossHistory(self.config.smoothing, state.losses)
        self.step, self.elapsed_before = state.step, state.elapsed
        logger.info("resumed %s at step %d", path.name, state.step)
        return path

    def _resume_path(self, resume) -> Path | None:
        if resume in (None, "", "none", False):
            return None
        if resume == "latest":
            if self.store is None:
                raise TrainingError("resume 'latest' needs a checkpoint folder; none is configured")
            return self.store.latest()  # None: nothing to resume yet, start fresh
        return Path(resume).expanduser()

    def _check_compatible(self, state: CheckpointState, path: Path) -> None:
        here, there = self.signature, state.model
        arch = [k for k in ("hidden", "depth", "depth_single_blocks", "shapes") if here[k] != there.get(k)]
        if arch:
            raise TrainingError(
                f"checkpoint '{path.name}' was trained on another model (hidden {there.get('hidden')}, "
                f"{there.get('depth')}+{there.get('depth_single_blocks')} blocks) but this model is "
                f"hidden {here['hidden']}, {here['depth']}+{here['depth_single_blocks']} blocks: "
                "resume with the same FLUX model, or start a new run")
        if here["fingerprint"] != there.get("fingerprint"):
            raise TrainingError(f"checkpoint '{path.name}' was trained on a model with other weights "
                                "(fingerprint differs): resume with the same model file, or start a new run")
        diffs = trajectory_differences(state.config, self.config, state.world, self.dist.world)
        if dict(self.data.description) != state.data:
            diffs.append(f"dataset: checkpoint {state.data}, now {dict(self.data.description)}")
        if diffs:
            raise TrainingError(f"checkpoint '{path.name}' was made with other settings; a resumed "
                                f"run must use the same ones (or start a new run): " + "; ".join(diffs))
        if sorted(state.params) != sorted(self.params):
            raise TrainingError(f"checkpoint '{path.name}' holds other LoRA modules than this run")

    def _checkpoint(self) -> Path | None:
        if self.store is None or not self.dist.is_main:
            return None
        state = CheckpointState(
            step=self.step, params=dict(self.params), optimizer=self.optimizer.state_dict(),
            noise_rng=self.noise.get_state(), order=self.order.state(), losses=list(self.history.raw),
            config=self.config.to_dict(), model=self.signature, data=dict(self.data.description),
            world=self.dist.world, elapsed=self.elapsed)
        return self.store.save(state)

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0)

    # ---- samples ----------------------------------------------------------------------------
    def _encoded(self, index: int) -> EncodedSample:
        hit = self._memory.pop(index, None)
        if hit is not None:
            self._memory_bytes -= _nbytes(hit)
            return hit
        with torch.no_grad():  # encoders are frozen models too
            return self.encoder.encode(self.data.source.sample(index))

    def _pre_encode(self) -> None:
        """Encode every sample the rest of the run uses (cache on disk, some kept in memory), so
        the encoders are never needed again once training starts."""
        order, need = self.order.copy(), self.config.samples_per_step(self.dist.world)
        mine = self.dist.positions(need)
        for _ in range(self.step, self.config.steps):
            indices = order.take(need)
            for p in mine:
                if indices[p] in self._memory:
                    continue
                with torch.no_grad():
                    sample = self.encoder.encode(self.data.source.sample(indices[p]))
                if self._memory_bytes + _nbytes(sample) <= MEMORY_BUDGET:
                    self._memory[indices[p]] = sample
                    self._memory_bytes += _nbytes(sample)
        logger.info("pre-encoded the run's samples: %s", json.dumps(self.encoder.stats()))

    # ---- one optimizer step -------------------------------------------------------------------
    def _train_step(self) -> tuple[float, float]:
        cfg = self.config
        need = cfg.samples_per_step(self.dist.world)
        indices, seeds = self.order.take(need), sample_seeds(self.noise, need)
        mine = self.dist.positions(need)
        lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=False)
        live = from_trainable_live(self.params).modules
        weight, total = 1.0 / len(mine), 0.0
        for m in range(cfg.grad_accumulation):
            chunk = mine[m * cfg.batch_size:(m + 1) * cfg.batch_size]
            samples = [self._encoded(indices[p]) for p in chunk]
            for group in group_by_layout(samples, cfg.batch_size):
                batch = collate([samples[i] for i in group], [chunk[i] for i in group],
                                cfg.position_mode, self.device)
                loss = batch_loss(self.dm, batch, seeds, live, cfg, self.dtype, self.device)
                (loss * weight).backward()
                total += float(loss.detach()) * weight
        for p in self.params.values():
            if p.grad is None:  # no path from the loss (e.g. a branch whose tokens are absent)
                p.grad = torch.zeros_like(p)
        self.dist.average_([p.grad for p in self.params.values()])
        total = self.dist.mean(total, self.device)
        if not math.isfinite(total):
            raise TrainingError(f"the loss became {total} at step {self.step + 1}: lower the "
                                f"learning_rate (now {cfg.learning_rate}) or use precision fp32")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return total, lr

    # ---- the run ------------------------------------------------------------------------------
    def run(self, callbacks: Callbacks | None = None, resume=None) -> TrainResult:
        cb = callbacks or Callbacks()
        with torch.inference_mode(False), torch.enable_grad(), frozen_base(self.dm):
            self._fresh()
            resumed = self._resume(resume)
            self._t0 = time.perf_counter()
            try:
                if self.config.pre_encode:
                    self._pre_encode()
            except cb.interrupts:  # cancelled before the first step: nothing new to keep
                return self._result(True, resumed, None)
            if cb.before_training is not None:
                cb.before_training()
            self._t0 = time.perf_counter()
            return self._loop(cb, resumed)

    def _loop(self, cb: Callbacks, resumed: Path | None) -> TrainResult:
        cfg, stopped, last_ckpt, preview, shown = self.config, False, resumed, None, -1
        saved_at = self.step if resumed else -1
        while self.step < cfg.steps and not stopped:
            if self.dist.any(bool(cb.should_stop()), self.device):
                stopped = True
                break
            rewind = (self.order.snapshot(), self.noise.get_state())
            try:
                loss, lr = self._train_step()
            except cb.interrupts:  # mid-step: the state is still the last finished step's
                self.order.rewind(rewind[0])
                self.noise.set_state(rewind[1])
                stopped = True
                break
            self.history.append(loss)
            if cb.on_step is not None and self.dist.is_main:
                cb.on_step(StepInfo(self.step, cfg.steps, loss, self.history.smoothed()[-1], lr,
                                    self.elapsed))
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                last_ckpt, saved_at = self._save(cb) or last_ckpt, self.step
            if cfg.validation_every and self.step % cfg.validation_every == 0:
                preview, stopped = self._validate_or_stop(cb, preview)
                shown = self.step
        if saved_at != self.step and self.step > 0:
            last_ckpt = self._save(cb) or last_ckpt
        if cfg.validation_every and shown != self.step and not stopped:
            preview, stopped = self._validate_or_stop(cb, preview)
        self.dist.barrier()
        return self._result(stopped, last_ckpt, preview)

    def _result(self, stopped: bool, checkpoint: Path | None, preview) -> TrainResult:
        return TrainResult(self.snapshot(), self.history, self.step, stopped, checkpoint, preview,
                           self.elapsed)

    def _validate_or_stop(self, cb: Callbacks, preview) -> tuple[object, bool]:
        """(newest preview, stopped): a cancel during validation keeps the finished step."""
        try:
            return _newer(self._validate(cb), preview), False
        except cb.interrupts:
            return preview, True

    def _save(self, cb: Callbacks) -> Path | None:
        path = self._checkpoint()
        if path is not None and cb.on_checkpoint is not None:
            cb.on_checkpoint(path, self.step)
        return path

    def _validate(self, cb: Callbacks):
        if cb.validate is None or not self.dist.is_main:
            return None
        with torch.no_grad():
            return cb.validate(from_trainable(self.params, self.metadata()), self.step)

    def metadata(self) -> dict[str, str]:
        sig = self.signature
        meta = {"musar.hidden_size": str(sig["hidden"]), "musar.depth": str(sig["depth"]),
                "musar.depth_single_blocks": str(sig["depth_single_blocks"]),
                "musar.base_model": self.base_model, "musar.train.step": str(self.step),
                "musar.train.dataset": json.dumps(dict(self.data.description), default=str)}
        meta.update({f"musar.train.{k}": json.dumps(v) for k, v in self.config.to_dict().items()})
        if len(self.history):
            meta["musar.train.final_loss_smoothed"] = f"{self.history.smoothed()[-1]:.6g}"
        return meta

    def snapshot(self) -> DualLoRA:
        """A detached copy of the LoRA as it is now, with file metadata."""
        return from_trainable({k: v.detach().float().cpu().clone() for k, v in self.params.items()},
                              self.metadata())


def _newer(value, old):
    return old if value is None else value


def _make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig):
    if cfg.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _device_of(dm) -> torch.device:
    for p in dm.parameters():
        return p.device
    return torch.device("cpu")


def _nbytes(sample: EncodedSample) -> int:
    tensors = [sample.x0, sample.context, sample.pooled, sample.subjects, *sample.captions]
    return sum(t.numel() * t.element_size() for t in tensors)
