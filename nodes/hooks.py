"""What the running ComfyUI offers the pack, learned from ComfyUI itself (never from its version
number), and one typed error when something the pack needs is missing.

* ``block_modulation()`` - how a FLUX block takes per-segment modulation: the keyword names of
  ``DoubleStreamBlock.forward`` / ``SingleStreamBlock.forward`` and the shape ``apply_mod`` wants
  for a stack of modulation vectors. ComfyUI 0.3.75 indexes ``m[:, i]`` (the stack needs a token
  axis: (B, K, 1, D)); ComfyUI 0.33 indexes ``m[:, i:i + 1]`` (the stack is (B, K, D)). The
  answer comes from calling ComfyUI's own ``apply_mod`` on tiny tensors, once per process.
* ``require(...)`` - a HookError naming this ComfyUI's version and the hook, raised before
  sampling starts (at patch time) or, for what only a running model shows (a block called
  without ``block_type`` / ``block_index``), at the first block, before any routed work.

docs/COMPATIBILITY.md lists every hook and private API the pack uses.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import comfy.ldm.flux.layers as flux_layers
import comfy.ldm.modules.attention as comfy_attention
import torch

from ..musar.errors import HookError


@functools.cache
def comfy_version() -> str:
    """This ComfyUI's version string, for messages only (``comfyui_version.py``)."""
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except (ImportError, AttributeError):
        return "(unknown version)"


def describe(value) -> str:
    """A value as a hook error names it (a tensor by its shape)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def hook_error(hook: str, found: str, todo: str) -> HookError:
    return HookError(f"ComfyUI {comfy_version()}: {hook} {found}. {todo}")


@dataclasses.dataclass(frozen=True)
class BlockModulation:
    """How this ComfyUI's FLUX blocks take per-segment modulation."""

    token_axis: bool  # the stacked vectors need a singleton token axis: (B, K, 1, D)
    options: bool  # the block forwards take ``transformer_options``

    def stack(self, *vectors: torch.Tensor) -> torch.Tensor:
        """(B, D) modulation vectors -> the stack the blocks index by a modulation row."""
        stacked = torch.stack(vectors, 1)
        return stacked[:, :, None] if self.token_axis else stacked


_BLOCK_KEYWORDS = {"DoubleStreamBlock": ("modulation_dims_img", "modulation_dims_txt"),
                   "SingleStreamBlock": ("modulation_dims",)}
_TODO = ("MUSAR subjects need per-segment modulation in FLUX's blocks; use a ComfyUI that has it "
         "(0.3.75 to 0.33 are tested) or report this ComfyUI version to the pack")


@functools.cache
def block_modulation() -> BlockModulation:
    """Learned from ComfyUI's own block signatures and ``apply_mod`` (HookError if neither
    known convention gives the per-segment result)."""
    options = True
    for cls_name, keywords in _BLOCK_KEYWORDS.items():
        cls = getattr(flux_layers, cls_name, None)
        params = inspect.signature(cls.forward).parameters if cls is not None else {}
        missing = [k for k in keywords if k not in params]
        if cls is None or missing:
            raise hook_error(f"comfy.ldm.flux.layers.{cls_name}.forward",
                             f"has no {', '.join(missing) or 'class'} argument", _TODO)
        options = options and "transformer_options" in params
    apply_mod = getattr(flux_layers, "apply_mod", None)
    if apply_mod is None:
        raise hook_error("comfy.ldm.flux.layers.apply_mod", "is missing", _TODO)
    for token_axis in (False, True):
        if _probe(apply_mod, token_axis):
            return BlockModulation(token_axis, options)
    raise hook_error("comfy.ldm.flux.layers.apply_mod",
                     "indexes per-segment modulation in a way MUSAR does not know", _TODO)


def _probe(apply_mod, token_axis: bool) -> bool:
    """Whether ``apply_mod`` scales and shifts each segment by its own row of a stack shaped
    per ``token_axis`` (2 images, 3 tokens, width 4: wrong conventions fail or differ)."""
    rows = torch.arange(1.0, 17.0).view(2, 2, 4)  # (B, K, D): row r of image b
    stack = rows[:, :, None] if token_axis else rows
    dims = [(0, 1, 1), (1, 3, 0)]
    try:
        got = apply_mod(torch.ones(2, 3, 4), stack, stack, dims)
    except (RuntimeError, IndexError):
        return False
    want = torch.cat([2 * rows[:, 1:2], 2 * rows[:, 0:1].expand(-1, 2, -1)], 1)
    return tuple(got.shape) == (2, 3, 4) and torch.equal(got, want)


def block_position(transformer_options: dict) -> tuple[str, int]:
    """("double" | "single", index) of the block running attention (ComfyUI's
    ``transformer_options`` keys); HookError when this ComfyUI does not set them."""
    kind, index = transformer_options.get("block_type"), transformer_options.get("block_index")
    if kind not in ("double", "single") or not isinstance(index, int):
        raise hook_error("transformer_options['block_type' / 'block_index'] in the attention call",
                         f"arrived as {kind!r} / {index!r}",
                         "MUSAR routing needs to know which FLUX block runs attention; this "
                         "ComfyUI's FLUX forward does not say")
    return kind, index


# ComfyUI's PyTorch kernel is plain SDPA (the override receives it unwrapped): routed attention
# may run it as the same op that also returns its log-sum-exp; other kernels get key gathers.
_SDPA = comfy_attention.attention_pytorch
_SDPA_KERNELS = (_SDPA, getattr(_SDPA, "__wrapped__", _SDPA))


def runs_sdpa(func, previous=None) -> bool:
    """Whether an attention call runs ComfyUI's PyTorch SDPA kernel: ``func`` itself when no
    other override is installed, else the kernel an override made by ComfyUI's
    ``ModelPatcher.set_model_optimized_attention`` (core's ModelAttentionBackend) calls, read
    from that function's closure. Any other override: unknown, so False."""
    if previous is None:
        return func in _SDPA_KERNELS
    if not getattr(previous, "__qualname__", "").startswith("ModelPatcher.set_model_optimized_attention."):
        return False
    cells = [c.cell_contents for c in (getattr(previous, "__closure__", None) or ())]
    return any(c in _SDPA_KERNELS for c in cells if callable(c))
