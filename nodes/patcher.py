"""The one place that knows ModelPatcher and transformer_options: MUSAR enters ComfyUI's FLUX
only through official hooks, always on a ``clone()``:

* ``WrappersMP.OUTER_SAMPLE``    - starts a fresh RunState per sampling run (per-run routes/cache),
                                   tagged with the sampler node and its output's fingerprint.
* ``WrappersMP.DIFFUSION_MODEL`` - per model call: translates ComfyUI's call into
                                   ``musar.planning.plan_call`` (layout, route, cache, scores),
                                   appends subject captions to the context, publishes the call.
* ``post_input`` patch           - appends subject image tokens (through img_in) and their ids.
* ``patches_replace`` dit blocks - runs the stock block with per-segment modulation
                                   (conditions: timestep 0, guidance 1).
* ``optimized_attention_override``- routed attention with ComfyUI's active attention kernel.
* object patches                 - dual-branch LoRA wrappers of image-side linear modules.
"""

from __future__ import annotations

import functools
import logging
import math

import comfy.ldm.flux.model
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.patcher_extension
import torch
from comfy.ldm.flux.layers import timestep_embedding
from comfy_execution.utils import get_executing_context

from ..musar import attention, flux_forward, planning, session
from ..musar.errors import ModelError, RoutingError
from ..musar.layout import TokenLayout, subject_ids
from ..musar.settings import RoutingSettings
from . import lora_modules

logger = logging.getLogger(__name__)
KEY = "musar"
ROUTING = "musar_routing"
RUN = "musar_run"
WRAPPERS = comfy.patcher_extension.WrappersMP


def flux_model(model):
    """The FLUX.1 diffusion model inside a ModelPatcher, or a ModelError saying what it is."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    if not isinstance(base, comfy.model_base.Flux) or not isinstance(dm, comfy.ldm.flux.model.Flux):
        raise ModelError(f"MUSAR works with FLUX.1 models; this MODEL is {type(base).__name__} / "
                         f"{type(dm).__name__}. Load FLUX.1 dev/schnell with UNETLoader.")
    if dm.params.global_modulation:
        raise ModelError("this FLUX variant (Flux 2 / Chroma: global modulation) is not the "
                         "FLUX.1 architecture MUSAR adapts")
    return dm


def model_shapes(model, names) -> dict[str, tuple[int, int]]:
    """(in, out) features of named modules, read from the (possibly object-patched) model."""
    out = {}
    for name in names:
        try:
            m = model.get_model_object(f"diffusion_model.{name}")
        except AttributeError:
            continue
        out[name] = (m.in_features, m.out_features)
    return out


def apply_lora(model, lora, s_noisy: float, s_subject: float):
    m = model.clone()
    for name, (noisy, subject) in lora.modules.items():
        key = f"diffusion_model.{name}"
        wrapped = lora_modules.wrap(m.get_model_object(key), name, noisy, subject, s_noisy, s_subject)
        m.add_object_patch(key, wrapped)
    _ensure_call_wrapper(m)
    return m


def apply_routing(model, subjects, settings: RoutingSettings):
    """A clone of ``model`` with ``subjects`` routed under ``settings``; returns it with the
    Recorder of its sampling runs (for the preview)."""
    dm = flux_model(model)
    to = model.model_options["transformer_options"]
    if to.get(ROUTING) is not None:
        raise RoutingError(f"this MODEL already went through MUSAR Apply Routing (subjects "
                           f"{list(to[ROUTING].recorder.captions)}); a second one cannot add to "
                           "it: chain every MUSAR Subject into one Apply Routing")
    replaced = {k for k, p in to.get("patches_replace", {}).get("dit", {}).items()
                if not getattr(p, "musar", False)}
    if replaced:
        raise ModelError(f"another node already replaced FLUX blocks {sorted(replaced)[:3]}...; "
                         "apply MUSAR routing before it (MUSAR must run the blocks itself)")
    sampling = model.get_model_object("model_sampling")
    routing = planning.resolve(settings, sampling.percent_to_sigma, len(dm.double_blocks),
                               len(dm.single_blocks))
    recorder = session.Recorder(tuple(s.caption for s in subjects.subjects))
    m = model.clone()
    to = m.model_options["transformer_options"]
    to[ROUTING] = _Routing(subjects, routing, recorder, model.model.process_latent_in)
    for kind, count in (("double_block", len(dm.double_blocks)), ("single_block", len(dm.single_blocks))):
        for i in range(count):
            m.set_model_patch_replace(_BlockPatch(kind, i), "dit", kind, i)
    if not any(getattr(p, "musar", False) for p in to.get("patches", {}).get("post_input", [])):
        m.set_model_post_input_patch(_post_input)
    previous = to.get("optimized_attention_override")
    if not getattr(previous, "musar", False):  # the setters above replace the options dict
        m.model_options["transformer_options"]["optimized_attention_override"] = _AttentionOverride(previous)
    m.remove_wrappers_with_key(WRAPPERS.OUTER_SAMPLE, KEY)
    m.add_wrapper_with_key(WRAPPERS.OUTER_SAMPLE, KEY, _outer_sample)
    _ensure_call_wrapper(m)
    return m, recorder


class _Routing:
    """What ApplyRouting put on the MODEL (immutable; shared by clones): the routed segments
    (subjects: a caption in the text stream, reference tokens appended to the image stream),
    the resolved settings and the recorder of sampling runs."""

    def __init__(self, subjects, routing: planning.Routing, recorder, process_latent_in):
        self.subjects, self.routing, self.recorder = subjects, routing, recorder
        self.process_latent_in = process_latent_in  # VAE latent -> model latent space
        grids = [s.grid for s in subjects.subjects]
        ids = subject_ids(grids, routing.settings.positions)
        self.ids = torch.cat([torch.zeros(0, 3)] + [i if s.keep is None else i[s.keep]
                                                    for i, s in zip(ids, subjects.subjects)])
        self.caption_lens = tuple(s.caption_tokens.shape[1] for s in subjects.subjects)
        self.image_lens = tuple(s.n_tokens for s in subjects.subjects)
        self._device_cache: dict = {}

    def tokens(self, device, dtype):
        """(packed reference tokens (1, n, C*4), caption features list) on device/dtype."""
        key = (str(device), dtype)
        if key not in self._device_cache:
            packed = torch.cat([s.packed(self.process_latent_in) for s in self.subjects.subjects], 1)
            caps = [s.caption_tokens.to(device=device, dtype=dtype) for s in self.subjects.subjects]
            self._device_cache = {key: (packed.to(device=device, dtype=dtype), caps)}
        return self._device_cache[key]

    def __deepcopy__(self, memo):
        return self


def _ensure_call_wrapper(m):
    m.remove_wrappers_with_key(WRAPPERS.DIFFUSION_MODEL, KEY)
    m.add_wrapper_with_key(WRAPPERS.DIFFUSION_MODEL, KEY, _diffusion_model_wrapper)


def _outer_sample(executor, *args, **kwargs):
    """A fresh RunState per sampling run, tagged with the sampler node that runs it and, when
    done, with the fingerprint of the latent it returns (how the preview finds its route)."""
    guider = executor.class_obj
    routing = guider.model_options["transformer_options"].get(ROUTING)
    if routing is None:
        return executor(*args, **kwargs)
    context = get_executing_context()
    run = routing.recorder.begin(None if context is None else (context.prompt_id, context.node_id))
    guider.model_options["transformer_options"][RUN] = run  # a per-sample copy, not the MODEL's
    out = executor(*args, **kwargs)
    run.output = session.fingerprint(out)
    return out


def _grid(h: int, w: int, patch: int) -> tuple[int, int]:
    return (h + patch // 2) // patch, (w + patch // 2) // patch


def _diffusion_model_wrapper(executor, x, timestep, context, y, guidance, ref_latents, control,
                             transformer_options, **kwargs):
    dm = executor.class_obj
    grid = _grid(x.shape[-2], x.shape[-1], dm.patch_size)
    extra = sum(math.prod(_grid(r.shape[-2], r.shape[-1], dm.patch_size)) for r in ref_latents or ())
    routing = transformer_options.get(ROUTING)
    if routing is None or len(routing.subjects) == 0:
        base = TokenLayout(context.shape[1], grid[0] * grid[1], extra_len=extra)
        with session.activate(session.MusarCall(base, model=dm)):
            return executor(x, timestep, context, y, guidance, ref_latents, control,
                            transformer_options, **kwargs)
    schedule = transformer_options.get("sample_sigmas")
    shape = planning.CallShape(
        prompt_len=context.shape[1], grid=grid, extra_len=extra, batch=x.shape[0],
        kinds=tuple(transformer_options.get("cond_or_uncond", [0])),
        sigma=float(transformer_options["sigmas"].max()), device=x.device,
        schedule=None if schedule is None else tuple(schedule.tolist()))
    run = transformer_options.get(RUN) or routing.recorder.latest or routing.recorder.begin()
    call = planning.plan_call(routing.routing, run, shape, routing.caption_lens, routing.image_lens)
    call.model, call.source = dm, routing
    call.vec0 = functools.partial(_clean_vec, dm, y, guidance is not None, x.shape[0])
    if kwargs.get("attention_mask") is not None:
        logger.warning("MUSAR: a conditioning attention_mask cannot be combined with subject "
                       "tokens and is not applied")
        kwargs = {**kwargs, "attention_mask": None}
    if not call.cached:
        _, caps = routing.tokens(x.device, x.dtype)
        context = torch.cat([context] + [c.to(context).expand(context.shape[0], -1, -1) for c in caps], 1)
    with session.activate(call):
        out = executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options,
                       **kwargs)
    call.finish()
    return out


def _clean_vec(dm, y, with_guidance: bool, batch: int, like: torch.Tensor) -> torch.Tensor:
    return flux_forward.clean_vector(dm, y, with_guidance, batch, like.device, like.dtype,
                                     embed=timestep_embedding)


def _post_input(args):
    call = session.ACTIVE.get()
    if call is None or call.source is None or call.cached:
        return args
    img, b = args["img"], args["img"].shape[0]
    packed, _ = call.source.tokens(img.device, img.dtype)
    with call.subject_img_in():
        ic = call.model.img_in(packed)
    ids = call.source.ids.to(args["img_ids"])
    return {**args, "img": torch.cat([img, ic.expand(b, -1, -1)], 1),
            "img_ids": torch.cat([args["img_ids"], ids.expand(b, -1, -1)], 1)}


_post_input.musar = True


class _BlockPatch:
    """Runs a stock FLUX block with per-segment modulation (conditions: clean vector)."""

    musar = True

    def __init__(self, kind: str, index: int):
        self.kind, self.index = kind, index

    def __call__(self, args, extra):
        call = session.ACTIVE.get()
        if call is None or call.source is None or call.cached:
            return extra["original_block"](args)
        vec = args["vec"]
        pair = torch.stack([vec, call.clean_vec(vec)], 1)[:, :, None]
        lay, to = call.layout, args["transformer_options"]
        if self.kind == "double_block":
            img, txt = call.model.double_blocks[self.index](
                img=args["img"], txt=args["txt"], vec=pair, pe=args["pe"],
                attn_mask=args.get("attn_mask"), modulation_dims_img=lay.modulation_dims("img"),
                modulation_dims_txt=lay.modulation_dims("txt"), transformer_options=to)
            return {"img": img, "txt": txt}
        out = call.model.single_blocks[self.index](
            args["img"], vec=pair, pe=args["pe"], attn_mask=args.get("attn_mask"),
            modulation_dims=lay.modulation_dims("joint"), transformer_options=to)
        return {"img": out}

    def __deepcopy__(self, memo):
        return self


# ComfyUI's PyTorch kernel is plain SDPA (the override receives it unwrapped): routed attention
# may run it as the same op that also returns its log-sum-exp; other kernels get key gathers.
_SDPA = comfy.ldm.modules.attention.attention_pytorch
_SDPA_KERNELS = (_SDPA, getattr(_SDPA, "__wrapped__", _SDPA))


class _AttentionOverride:
    """Routed attention through ComfyUI's active kernel (or an override already installed)."""

    musar = True

    def __init__(self, previous=None):
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, mask=None, transformer_options=None, **kwargs):
        def kernel(q_, k_, v_, mask_=None):
            kw = dict(kwargs, skip_reshape=True, mask=mask_, transformer_options=transformer_options)
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, heads, *args, **kw)
            return func(q_, k_, v_, heads, *args, **kw)

        kernel.lse = attention.SDPA_LSE if self.previous is None and func in _SDPA_KERNELS else None
        call = session.ACTIVE.get()
        if call is None or call.source is None:
            return kernel(q, k, v, mask)
        lay = call.layout
        if q.shape[2] != (lay.prompt_len + lay.canvas_len if call.cached else lay.total):
            raise RuntimeError(f"MUSAR: attention over {q.shape[2]} tokens, layout expects {lay.total}")
        block = (transformer_options.get("block_type"), transformer_options.get("block_index"))
        return attention.block_attention(call, block, q, k, v, mask, kernel)
