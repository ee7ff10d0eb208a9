"""Dual-branch LoRA: math, in-memory form and the safetensors file format.

One linear layer, two low-rank deltas on different tokens (activation space)::

    y = base(x) + s_n * [token is canvas X] * B_n A_n x + s_s * [token is subject image Ic] * B_s A_s x

Prompt and caption tokens get neither. A weight-merged LoRA cannot express this, so the deltas
are added to the layer's output. Module names follow ComfyUI's FLUX (``double_blocks.3.img_attn.qkv``).

File format (version 1, safetensors)::

    musar.<module>.noisy.down    (r_n, in)      musar.<module>.noisy.up    (out, r_n)
    musar.<module>.subject.down  (r_s, in)      musar.<module>.subject.up  (out, r_s)
    metadata: musar.format_version, musar.noisy_rank, musar.subject_rank, musar.noisy_alpha,
              musar.subject_alpha, musar.targets (JSON list), musar.hidden_size, musar.depth,
              musar.depth_single_blocks, musar.base_model, plus free-form musar.train.* keys

The scale of a branch is alpha / rank, both read from the metadata (``musar.<branch>_alpha``,
``musar.<branch>_rank``); a file without an alpha has scale 1. This pack writes alpha = rank with
any in-memory scale already multiplied into ``up``, so its own files load at scale 1; a file
written elsewhere with another alpha is scaled as that convention says (PEFT / kohya do the same).
OminiControl's PEFT/diffusers subject LoRAs are read by ``omini.py`` into the same in-memory form
(as the subject branch).

Every loaded file, whatever its layout, passes one structural check before it reaches a model:
``check_tensor`` on each raw tensor (2-D, floating point, non-empty, finite) and ``check_lora`` on
the result (known image-side Linear targets, ranks that agree, finite scales); ``omini.check_fits``
then compares it with the model. Anything else is a LoRAFormatError naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping

import torch

from .errors import LoRAFormatError
from .layout import NOISY, SUBJECT

FORMAT_VERSION = 1
BRANCHES = ("noisy", "subject")
DOUBLE_TARGETS = ("img_mod.lin", "img_attn.qkv", "img_attn.proj", "img_mlp.2")
SINGLE_TARGETS = ("modulation.lin", "linear1", "linear2")
# Every module a LoRA file may adapt: the image-side Linear layers of FLUX.1 (img_mlp.0 is not
# trained by this pack but OminiControl's ff.net.0.proj maps to it).
_ADAPTABLE = re.compile(r"img_in|double_blocks\.\d+\.(?:img_mod\.lin|img_attn\.qkv|img_attn\.proj"
                        r"|img_mlp\.0|img_mlp\.2)|single_blocks\.\d+\.(?:modulation\.lin|linear1|linear2)")


def target_modules(depth: int, depth_single: int) -> list[str]:
    """The image-side modules MUSAR adapts (OminiControl's set, in ComfyUI names)."""
    names = ["img_in"]
    names += [f"double_blocks.{i}.{t}" for i in range(depth) for t in DOUBLE_TARGETS]
    names += [f"single_blocks.{i}.{t}" for i in range(depth_single) for t in SINGLE_TARGETS]
    return names


def module_role(name: str) -> str:
    """How a module's tokens are laid out: 'img_in', 'img' (image stream), 'joint' (single
    blocks) or 'mod' (modulation: input rows are [sampling vec, clean-condition vec])."""
    if not isinstance(name, str) or not _ADAPTABLE.fullmatch(name):
        raise LoRAFormatError(f"module {name!r} is not an image-side FLUX Linear module MUSAR can "
                              f"adapt (expected img_in, double_blocks.N.{{{','.join(DOUBLE_TARGETS)}}}"
                              f" or single_blocks.N.{{{','.join(SINGLE_TARGETS)}}})")
    if name == "img_in":
        return "img_in"
    if name.endswith("mod.lin") or name.endswith("modulation.lin"):
        return "mod"
    return "joint" if name.startswith("single_blocks.") else "img"


@dataclasses.dataclass(frozen=True)
class LoRAPair:
    down: torch.Tensor  # (r, in)
    up: torch.Tensor  # (out, r)
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down.to(device=x.device, dtype=x.dtype)
        up = self.up.to(device=x.device, dtype=x.dtype)
        return (x @ down.t()) @ (up.t() * self.scale)


@dataclasses.dataclass(frozen=True)
class DualLoRA:
    """{module name: (noisy pair or None, subject pair or None)} plus file metadata."""

    modules: Mapping[str, tuple[LoRAPair | None, LoRAPair | None]]
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def branch_ranks(self) -> tuple[int, int]:
        ranks = [max((p[b].rank for p in self.modules.values() if p[b] is not None), default=0)
                 for b in (0, 1)]
        return ranks[0], ranks[1]

    def has_branch(self, branch: str) -> bool:
        b = BRANCHES.index(branch)
        return any(p[b] is not None for p in self.modules.values())

    def __deepcopy__(self, memo):  # immutable: ComfyUI deep-copies model_options on clone()
        return self


def apply_dual(x: torch.Tensor, out: torch.Tensor, classes: torch.Tensor | None,
               noisy: LoRAPair | None, subject: LoRAPair | None,
               s_noisy: float, s_subject: float, dim: int = -2) -> torch.Tensor:
    """Add each branch's delta to ``out`` on its own tokens only.

    ``classes`` holds one NOISY / SUBJECT / NONE entry per index of ``x`` along ``dim`` (the
    token axis; 1 for modulation inputs whose rows are [sampling, clean-condition]). None means
    every token is NOISY. Deltas are computed on the selected tokens only."""
    out = out.clone()
    dim = dim % x.ndim
    for pair, strength, cls in ((noisy, s_noisy, NOISY), (subject, s_subject, SUBJECT)):
        if pair is None or strength == 0:
            continue
        if classes is None:
            if cls == NOISY:
                out += pair.delta(x) * strength
            continue
        if classes.shape[0] != x.shape[dim]:
            raise ValueError(f"{classes.shape[0]} token classes for {x.shape[dim]} tokens")
        idx = torch.nonzero(classes.to(x.device) == cls).flatten()
        if idx.numel() == x.shape[dim]:
            out += pair.delta(x) * strength
        elif idx.numel():
            out.index_add_(dim, idx, pair.delta(x.index_select(dim, idx)) * strength)
    return out


def modulation_classes(x: torch.Tensor) -> torch.Tensor:
    """Rows (dim 1) of a modulation input that stacks [sampling, clean-condition] vectors:
    (B, 2, H), or (B, 2, 1, H) where ComfyUI's blocks want a token axis."""
    if x.ndim < 3 or x.shape[1] != 2:
        raise ValueError(f"a stacked modulation input is (B, 2, [1,] H), got {tuple(x.shape)}")
    return torch.tensor([NOISY, SUBJECT], dtype=torch.int8)


# ---- file format ---------------------------------------------------------------------------
def save_dual_lora(path: str | os.PathLike, lora: DualLoRA, extra_metadata: Mapping[str, str] = ()
                   ) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, pairs in lora.modules.items():
        for branch, pair in zip(BRANCHES, pairs):
            if pair is not None:
                tensors[f"musar.{name}.{branch}.down"] = pair.down.detach().float().contiguous().cpu()
                tensors[f"musar.{name}.{branch}.up"] = (pair.up.detach().float() * pair.scale).contiguous().cpu()
    meta = {**lora.metadata, **dict(extra_metadata), "musar.format_version": str(FORMAT_VERSION)}
    meta["musar.targets"] = json.dumps(sorted(lora.modules))
    meta.update({f"musar.{b}_rank": str(r) for b, r in zip(BRANCHES, lora.branch_ranks())})
    for b, r in zip(BRANCHES, lora.branch_ranks()):  # scale already in ``up``: alpha = rank
        meta.pop(f"musar.{b}_alpha", None)
        if r:
            meta[f"musar.{b}_alpha"] = str(r)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, metadata); any read failure becomes a LoRAFormatError naming the file."""
    from safetensors import safe_open

    name = os.path.basename(os.fspath(path))
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several exception types for broken files
        raise LoRAFormatError(f"LoRA '{name}' could not be read as safetensors ({e}); the file "
                              "is corrupt or not a safetensors file - download or save it again"
                              ) from None
    return tensors, meta


def parse_musar_tensors(tensors: dict, meta: dict, name: str) -> DualLoRA:
    version = _meta_number(meta, "musar.format_version", name, integer=True, default=0)
    if version > FORMAT_VERSION:
        raise LoRAFormatError(f"LoRA '{name}' uses MUSAR format {version}; this pack reads up to "
                              f"{FORMAT_VERSION} - update ComfyUI-MUSAR")
    found: dict[str, list] = {}
    for key, t in tensors.items():
        parts = key.split(".")
        if parts[0] != "musar" or len(parts) < 4 or parts[-2] not in BRANCHES \
                or parts[-1] not in ("down", "up"):
            raise LoRAFormatError(f"LoRA '{name}': unexpected tensor {key!r} in a MUSAR file "
                                  "(expected musar.<module>.noisy|subject.down|up)")
        module = ".".join(parts[1:-2])
        _role(module, key, name)
        found.setdefault(module, [{}, {}])[BRANCHES.index(parts[-2])][parts[-1]] = t
    modules = {}
    for module, branches in found.items():
        pairs = []
        for b, d in zip(BRANCHES, branches):
            if d and set(d) != {"down", "up"}:
                missing = ({"down", "up"} - set(d)).pop()
                raise LoRAFormatError(f"LoRA '{name}': musar.{module}.{b}.{missing} is missing "
                                      f"(a branch needs both its down and up tensor)")
            pairs.append(LoRAPair(d["down"], d["up"]) if d else None)
        modules[module] = tuple(pairs)
    return _with_alpha(check_lora(DualLoRA(modules, meta), name), name)


def _with_alpha(lora: DualLoRA, name: str) -> DualLoRA:
    """Scale each branch by alpha / rank (metadata); rank metadata must match the tensors."""
    ranks, scales = lora.branch_ranks(), []
    for b, rank in zip(BRANCHES, ranks):
        stated = _meta_number(lora.metadata, f"musar.{b}_rank", name, integer=True, default=None)
        if stated is not None and rank and stated != rank:
            raise LoRAFormatError(f"LoRA '{name}': metadata musar.{b}_rank says {stated} but its "
                                  f"{b} tensors have rank {rank}; the file was edited or damaged")
        alpha = _meta_number(lora.metadata, f"musar.{b}_alpha", name, default=None)
        scales.append(1.0 if alpha is None or not rank else alpha / rank)
    if scales == [1.0, 1.0]:
        return lora
    modules = {m: tuple(None if p is None else dataclasses.replace(p, scale=p.scale * s)
                        for p, s in zip(pairs, scales)) for m, pairs in lora.modules.items()}
    return DualLoRA(modules, lora.metadata)


def _meta_number(meta: Mapping, key: str, name: str, *, integer: bool = False, default):
    """A metadata number: an integer >= 0, or a finite float > 0 (alpha)."""
    text = meta.get(key)
    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        value = None
    ok = value is not None and (value >= 0 if integer else (math.isfinite(value) and value > 0))
    if not ok:
        want = "an integer >= 0" if integer else "a finite number > 0"
        raise LoRAFormatError(f"LoRA '{name}': metadata {key} is {text!r}; expected {want} - the "
                              "file was edited or written by another tool")
    return value


def _role(module: str, key: str, name: str) -> str:
    try:
        return module_role(module)
    except LoRAFormatError as e:
        raise LoRAFormatError(f"LoRA '{name}': tensor {key!r} targets {e}") from None


def check_tensor(t, key: str, name: str) -> torch.Tensor:
    """One raw LoRA factor: a non-empty 2-D floating-point matrix of finite values (as float32)."""
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or 0 in t.shape or not t.is_floating_point():
        what = f"shape {tuple(t.shape)} ({t.dtype})" if isinstance(t, torch.Tensor) else type(t).__name__
        raise LoRAFormatError(f"LoRA '{name}': tensor {key!r} has {what}; expected a non-empty 2-D "
                              "floating-point matrix (down: rank x in, up: out x rank) - the file is "
                              "damaged or not a LoRA")
    t = t.float()
    if not torch.isfinite(t).all():
        raise LoRAFormatError(f"LoRA '{name}': tensor {key!r} holds NaN or infinite values; the file "
                              "is damaged (e.g. saved from a diverged training run) - use another "
                              "file or an earlier checkpoint")
    return t


def check_lora(lora: DualLoRA, name: str) -> DualLoRA:
    """The structural check every loaded LoRA passes, whatever its file layout; returns it with
    float32 factors."""
    if not lora.modules:
        raise LoRAFormatError(f"LoRA '{name}' holds no LoRA tensors; expected at least one module")
    modules = {}
    for module, pairs in lora.modules.items():
        _role(module, f"musar.{module}", name)
        if len(pairs) != 2 or all(p is None for p in pairs):
            raise LoRAFormatError(f"LoRA '{name}': {module} has no noisy or subject factors")
        modules[module] = tuple(None if p is None else _check_pair(p, f"musar.{module}.{b}", name)
                                for b, p in zip(BRANCHES, pairs))
    return DualLoRA(modules, lora.metadata)


def _check_pair(pair: LoRAPair, key: str, name: str) -> LoRAPair:
    down, up = check_tensor(pair.down, f"{key}.down", name), check_tensor(pair.up, f"{key}.up", name)
    if down.shape[0] != up.shape[1]:
        raise LoRAFormatError(f"LoRA '{name}': {key} ranks disagree (down {tuple(down.shape)}, up "
                              f"{tuple(up.shape)}); expected down (rank, in) and up (out, rank)")
    if isinstance(pair.scale, bool) or not isinstance(pair.scale, (int, float)) \
            or not math.isfinite(pair.scale):
        raise LoRAFormatError(f"LoRA '{name}': {key} has scale {pair.scale!r}; expected a finite "
                              "number (alpha / rank)")
    return LoRAPair(down, up, float(pair.scale))


def init_trainable(shapes: Mapping[str, tuple[int, int]], noisy_rank: int, subject_rank: int,
                   seed: int, dtype=torch.float32) -> dict[str, torch.nn.Parameter]:
    """Fresh trainable factors: down ~ Kaiming-uniform (seeded), up = 0 (a no-op at start).
    Keys: '<module>.<branch>.down|up'. ``shapes`` maps module -> (in, out)."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name in sorted(shapes):
        fan_in, fan_out = shapes[name]
        for branch, rank in (("noisy", noisy_rank), ("subject", subject_rank)):
            if rank <= 0:
                continue
            bound = 1.0 / math.sqrt(fan_in)
            down = (torch.rand(rank, fan_in, generator=gen, dtype=torch.float32) * 2 - 1) * bound
            params[f"{name}.{branch}.down"] = torch.nn.Parameter(down.to(dtype))
            params[f"{name}.{branch}.up"] = torch.nn.Parameter(torch.zeros(fan_out, rank, dtype=dtype))
    return params


def from_trainable(params: Mapping[str, torch.Tensor], metadata: Mapping[str, str] = ()) -> DualLoRA:
    """A detached snapshot of trainable factors (for saving / inference)."""
    return _collect(params, metadata, detach=True)


def from_trainable_live(params: Mapping[str, torch.Tensor], metadata: Mapping[str, str] = ()) -> DualLoRA:
    """The trainable factors themselves (gradients flow through the returned pairs)."""
    return _collect(params, metadata, detach=False)


def _collect(params, metadata, detach: bool) -> DualLoRA:
    modules: dict[str, list] = {}
    for key in params:
        if key.endswith(".down"):
            module, branch = key[: -len(".down")].rsplit(".", 1)
            down, up = params[key], params[f"{module}.{branch}.up"]
            pair = LoRAPair(down.detach() if detach else down, up.detach() if detach else up)
            modules.setdefault(module, [None, None])[BRANCHES.index(branch)] = pair
    return DualLoRA({k: tuple(v) for k, v in modules.items()}, dict(metadata))
