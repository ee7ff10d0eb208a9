"""The model families the pack routes, told apart by ComfyUI's own model classes, and the one
thing that differs between their forwards for the pack: where the call's arguments are.

| family | ComfyUI classes | MUSAR subjects, dual LoRA | Route References |
|---|---|---|---|
| FLUX.1 (dev, schnell, Kontext) | model_base.Flux, ldm.flux.model.Flux | yes | yes |
| FLUX.2 ([dev], [klein]) | model_base.Flux2 | no (global modulation) | yes |
| Qwen-Image (Edit 2509, 2511) | model_base.QwenImage, ldm.qwen_image.model.QwenImageTransformer2DModel | no | yes |

All three run joint attention over ``[txt | img | references]`` through ComfyUI's
``optimized_attention`` with ``block_type`` / ``block_index`` set, which is all reference routing
needs; subjects also need FLUX.1's per-block modulation.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import comfy.ldm.flux.model
import comfy.model_base

from ..musar.errors import ModelError
from . import hooks

ROUTED = "FLUX.1 (dev, schnell, Kontext), FLUX.2 ([dev], [klein]) and Qwen-Image (Edit 2509 / 2511)"


def _qwen_classes() -> tuple:
    base = getattr(comfy.model_base, "QwenImage", None)
    return (base,) if base is not None else ()


def family_of(model) -> str:
    """"flux1", "flux2" or "qwen_image" for a ModelPatcher; ModelError for anything else."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if isinstance(base, comfy.model_base.Flux) and isinstance(dm, comfy.ldm.flux.model.Flux):
        if isinstance(base, getattr(comfy.model_base, "Flux2", ())):
            return "flux2"
        if dm.params.global_modulation:
            raise ModelError("this FLUX variant (Chroma: global modulation) is not one MUSAR "
                             f"routes; routed are {ROUTED}")
        return "flux1"
    if _qwen_classes() and isinstance(base, _qwen_classes()):
        return "qwen_image"
    raise ModelError(f"MUSAR routes {ROUTED}; this MODEL is {type(base).__name__} / "
                     f"{type(dm).__name__}. Load one of those with UNETLoader.")


def subject_model(model):
    """The FLUX.1 diffusion model of a ModelPatcher (MUSAR subjects, the dual LoRA, training)."""
    family = family_of(model)
    if family != "flux1":
        name = {"flux2": "a FLUX.2", "qwen_image": "a Qwen-Image"}[family]
        raise ModelError(f"this is {name} model: MUSAR subjects and the dual LoRA need FLUX.1's "
                         "per-block modulation (MUSAR Subject / Apply Routing / Load Dual LoRA "
                         "are FLUX.1 only). Its own ReferenceLatent references can be routed "
                         "with MUSAR Route References")
    return model.model.diffusion_model


def reference_model(model):
    """The diffusion model of a ModelPatcher whose references MUSAR Route References routes."""
    family_of(model)
    return model.model.diffusion_model


def depths(dm) -> tuple[int, int]:
    """(double-stream, single-stream) block counts (Qwen-Image's blocks are all double)."""
    if hasattr(dm, "double_blocks"):
        return len(dm.double_blocks), len(dm.single_blocks)
    return len(dm.transformer_blocks), 0


def tokens_of(latent, patch: int) -> int:
    """Image tokens of a latent (B, C, [T,] H, W) once patchified."""
    frames = latent.shape[2] if latent.ndim == 5 else 1
    return frames * math.prod(grid_of(latent.shape[-2], latent.shape[-1], patch))


def grid_of(h: int, w: int, patch: int) -> tuple[int, int]:
    return (h + patch // 2) // patch, (w + patch // 2) // patch


def reference_methods(guider) -> set[str]:
    """The reference methods a sampling run's conditionings use: each one's own, else the
    model's default (an object patch, e.g. core's FluxKVCache, may have changed it; FLUX keeps
    it in ``params``, Qwen-Image on the model)."""
    default = None
    for name in ("diffusion_model.params.default_ref_method", "diffusion_model.default_ref_method"):
        try:
            default = guider.model_patcher.get_model_object(name)
            break
        except AttributeError:
            continue
    return {c.get("reference_latents_method", default) for conds in guider.conds.values()
            for c in conds if c.get("reference_latents")}


NAMED = {"x", "context", "ref_latents", "transformer_options"}


@dataclasses.dataclass
class CallArgs:
    """One call of a diffusion model's ``_forward`` as the DIFFUSION_MODEL wrapper receives it,
    bound by name to that model's own signature (FLUX: x, timestep, context, y, guidance,
    ref_latents, control, transformer_options; Qwen-Image: x, timesteps, context,
    attention_mask, ref_latents, additional_t_cond, transformer_options)."""

    bound: inspect.BoundArguments

    @classmethod
    def bind(cls, dm, args, kwargs) -> CallArgs:
        """The model's own argument names: ``forward`` hands ``_forward`` its arguments in its
        own order (``_forward`` itself may be wrapped by another patch)."""
        for name in ("forward", "_forward"):
            signature = inspect.signature(getattr(type(dm), name))
            if NAMED <= set(signature.parameters):
                return cls(signature.bind(dm, *args, **kwargs))
        raise hooks.hook_error(f"{type(dm).__name__}.forward", "does not name x / context / "
                               "ref_latents / transformer_options",
                               "MUSAR reads the diffusion model's call by these names")

    def get(self, name: str, default=None):
        return self.bound.arguments.get(name, default)

    def set(self, **values) -> None:
        self.bound.arguments.update(values)

    def call(self, executor):
        """Run the executor with the (possibly replaced) arguments, without ``self``."""
        args = self.bound.args[1:]
        return executor(*args, **self.bound.kwargs)
