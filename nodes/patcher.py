"""The one place that knows ModelPatcher and transformer_options: MUSAR enters ComfyUI's FLUX
only through official hooks, always on a ``clone()``:

* ``WrappersMP.OUTER_SAMPLE``    - starts a fresh RunState per sampling run (per-run routes/cache).
* ``WrappersMP.DIFFUSION_MODEL`` - per model call: builds the token layout and routing plan,
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
import comfy.model_base
import comfy.patcher_extension
import torch
from comfy.ldm.flux.layers import timestep_embedding

from ..musar import session
from ..musar.errors import ModelError
from ..musar.layout import TokenLayout, subject_ids
from ..musar.routing import RoutePlan
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


def apply_routing(model, subjects, settings: session.RoutingSettings, recorder: session.Recorder):
    dm = flux_model(model)
    m = model.clone()
    to = m.model_options["transformer_options"]
    replaced = {k for k in to.get("patches_replace", {}).get("dit", {})
                if not getattr(to["patches_replace"]["dit"][k], "musar", False)}
    if replaced:
        raise ModelError(f"another node already replaced FLUX blocks {sorted(replaced)[:3]}...; "
                         "apply MUSAR routing before it (MUSAR must run the blocks itself)")
    to[ROUTING] = _Routing(subjects, settings, recorder, model.model.process_latent_in)
    for kind, count in (("double_block", len(dm.double_blocks)), ("single_block", len(dm.single_blocks))):
        for i in range(count):
            m.set_model_patch_replace(_BlockPatch(kind, i), "dit", kind, i)
    if not any(getattr(p, "musar", False) for p in to.get("patches", {}).get("post_input", [])):
        m.set_model_post_input_patch(_post_input)
    previous = to.get("optimized_attention_override")
    if not getattr(previous, "musar", False):
        m.model_options["transformer_options"]["optimized_attention_override"] = _AttentionOverride(previous)
    m.remove_wrappers_with_key(WRAPPERS.OUTER_SAMPLE, KEY)
    m.add_wrapper_with_key(WRAPPERS.OUTER_SAMPLE, KEY, _outer_sample)
    _ensure_call_wrapper(m)
    return m


class _Routing:
    """What ApplyRouting put on the MODEL (immutable; shared by clones)."""

    def __init__(self, subjects, settings, recorder, process_latent_in):
        self.subjects, self.settings, self.recorder = subjects, settings, recorder
        self.process_latent_in = process_latent_in  # VAE latent -> model latent space
        grids = [s.grid for s in subjects.subjects]
        ids = subject_ids(grids, settings.position_mode)
        self.ids = torch.cat([torch.zeros(0, 3)] + [i if s.keep is None else i[s.keep]
                                                    for i, s in zip(ids, subjects.subjects)])
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
    guider = executor.class_obj
    routing = guider.model_options["transformer_options"].get(ROUTING)
    if routing is not None:  # guider.model_options is a per-sample copy, not the MODEL's
        guider.model_options["transformer_options"][RUN] = routing.recorder.begin()
    return executor(*args, **kwargs)


def _grid(h: int, w: int, patch: int) -> tuple[int, int]:
    return (h + patch // 2) // patch, (w + patch // 2) // patch


def _diffusion_model_wrapper(executor, x, timestep, context, y, guidance, ref_latents, control,
                             transformer_options, **kwargs):
    dm = executor.class_obj
    grid = _grid(x.shape[-2], x.shape[-1], dm.patch_size)
    extra = sum(math.prod(_grid(r.shape[-2], r.shape[-1], dm.patch_size)) for r in ref_latents or ())
    routing = transformer_options.get(ROUTING)
    base = TokenLayout(context.shape[1], grid[0] * grid[1], extra_len=extra)
    if routing is None or len(routing.subjects) == 0:
        with session.activate(session.MusarCall(base, model=dm)):
            return executor(x, timestep, context, y, guidance, ref_latents, control,
                            transformer_options, **kwargs)
    call = _build_call(dm, routing, base, grid, x, timestep, y, guidance, transformer_options)
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


def _build_call(dm, routing, base, grid, x, timestep, y, guidance, transformer_options):
    settings: session.RoutingSettings = routing.settings
    subjects = routing.subjects.subjects
    layout = TokenLayout(base.prompt_len, base.x_len,
                         tuple(s.caption_tokens.shape[1] for s in subjects),
                         tuple(s.n_tokens for s in subjects), base.extra_len)
    run = transformer_options.get(RUN) or routing.recorder.latest or routing.recorder.begin()
    run.grid = grid
    kinds = list(transformer_options.get("cond_or_uncond", [0]))
    sigma = float(transformer_options["sigmas"].max())
    route = run.route_for(sigma, kinds, grid, settings) if settings.dynamic_at(sigma) else None
    if route is not None and route.shape[0] != x.shape[0]:
        route = None  # batch changed shape mid-run (e.g. another sampler call): stay static
    plan = RoutePlan(settings.static, None if route is None else route.to(x.device), settings.symmetric and route is not None)
    batch_key = (tuple(kinds), x.shape[0])
    cached = settings.cache and bool(run.kv) and run.kv_batch == batch_key
    if settings.cache and not cached:
        run.kv, run.kv_batch = {}, batch_key
    vec0 = functools.partial(_clean_vec, dm, y, guidance, x.shape[0])
    return session.MusarCall(layout, plan, settings, run, kinds,
                             collect=_next_step_routes(settings, sigma, transformer_options),
                             cached=cached, model=dm, source=routing, vec0=vec0)


def _next_step_routes(settings, sigma: float, transformer_options) -> bool:
    """Route scores are only worth computing when the next step will use a route."""
    if not settings.dynamic:
        return False
    schedule = transformer_options.get("sample_sigmas")
    if schedule is None:  # not called by a ComfyUI sampler: keep scores for any later call
        return sigma >= settings.sigma_end
    later = [float(s) for s in schedule if 0 < float(s) < sigma]
    return bool(later) and settings.dynamic_at(max(later))


def _clean_vec(dm, y, guidance, batch, like: torch.Tensor) -> torch.Tensor:
    """FLUX's modulation vector at timestep 0 and guidance 1 (the clean-condition vector)."""
    zeros = torch.zeros(batch, device=like.device, dtype=like.dtype)
    vec = dm.time_in(timestep_embedding(zeros, 256).to(like.dtype))
    if dm.params.guidance_embed and guidance is not None:
        vec = vec + dm.guidance_in(timestep_embedding(zeros + 1, 256).to(like.dtype))
    if dm.vector_in is not None:
        yy = y if y is not None else torch.zeros(batch, dm.params.vec_in_dim)
        vec = vec + dm.vector_in(yy[:, :dm.params.vec_in_dim].to(like))
    return vec


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

        call = session.ACTIVE.get()
        if call is None or call.source is None:
            return kernel(q, k, v, mask)
        lay = call.layout
        if q.shape[2] != (lay.prompt_len + lay.canvas_len if call.cached else lay.total):
            raise RuntimeError(f"MUSAR: attention over {q.shape[2]} tokens, layout expects {lay.total}")
        block = (transformer_options.get("block_type"), transformer_options.get("block_index"))
        return session.block_attention(call, block, q, k, v, mask, kernel)
