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
* ``optimized_attention_override``- routed attention with ComfyUI's active attention kernel, set
                                   per call around the MODEL's own override (any node order).
* object patches                 - dual-branch LoRA wrappers of image-side linear modules.
"""

from __future__ import annotations

import functools
import logging

import comfy.patcher_extension
import torch
from comfy.ldm.flux.layers import timestep_embedding
from comfy_execution.utils import get_executing_context

from ..musar import attachment, attention, block, flux_forward, planning, references, session
from ..musar.errors import ModelError
from ..musar.layout import TokenLayout
from ..musar.references import ReferenceLabels
from ..musar.settings import RoutingSettings
from . import families, hooks, lora_modules

logger = logging.getLogger(__name__)
KEY = "musar"
ATTACHMENT = "musar_attachment"  # transformer_options key: the musar.attachment.Attachment
RUN = "musar_run"
WRAPPERS = comfy.patcher_extension.WrappersMP


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
    """A clone of ``model`` with ``subjects`` routed under ``settings`` (joining the references
    a MUSAR Route References already routes); returns it with the Recorder of its runs."""
    dm = families.subject_model(model)
    previous = model.model_options["transformer_options"].get(ATTACHMENT)
    return _install(model, dm, *attachment.join(previous, settings, subjects=subjects))


def route_references(model, labels: ReferenceLabels, settings: RoutingSettings):
    """A clone of ``model`` whose ReferenceLatent references are routed under ``settings``
    (every family of ``families``), joining the MUSAR subjects it may already route."""
    dm = families.reference_model(model)
    previous = model.model_options["transformer_options"].get(ATTACHMENT)
    return _install(model, dm, *attachment.join(previous, settings, references=labels))


def _install(model, dm, subjects, references, settings: RoutingSettings):
    """Patch a clone for one routing of ``subjects`` and/or the conditioning's references: block
    patches when the pack modulates per segment (subjects, or references isolated on FLUX.1),
    subject tokens only with subjects."""
    to = model.model_options["transformer_options"]
    flux1 = families.family_of(model) == "flux1"
    clean_refs = attachment.check_isolation(subjects, references, settings, flux1)
    blocks = len(subjects) > 0 or clean_refs
    replaced = {k for k, p in to.get("patches_replace", {}).get("dit", {}).items()
                if not getattr(p, "musar", False)}
    if replaced and blocks:
        raise ModelError(f"another node already replaced FLUX blocks {sorted(replaced)[:3]}...; "
                         "apply MUSAR routing before it (MUSAR must run the blocks itself)")
    if blocks:
        hooks.block_modulation()  # HookError now, not at the first step, on an unknown ComfyUI
    attachment.check_regions(subjects, references, settings)
    hard = subjects.has_hard_region or (references is not None and references.has_hard_region)
    sampling = model.get_model_object("model_sampling")
    schedule = planning.resolve(settings, sampling.percent_to_sigma, *families.depths(dm),
                                hard_regions=hard)
    recorder = session.Recorder(tuple(s.caption for s in subjects.subjects),
                                routes=schedule.routes)
    m = model.clone()
    to = m.model_options["transformer_options"]
    to[ATTACHMENT] = attachment.Attachment(subjects, references, schedule, recorder,
                                           model.model.process_latent_in, clean_refs)
    if blocks:
        for kind, count in (("double_block", len(dm.double_blocks)),
                            ("single_block", len(dm.single_blocks))):
            for i in range(count):
                m.set_model_patch_replace(_BlockPatch(kind, i), "dit", kind, i)
    if len(subjects) and not any(getattr(p, "musar", False)
                                 for p in to.get("patches", {}).get("post_input", [])):
        m.set_model_post_input_patch(_post_input)
    m.remove_wrappers_with_key(WRAPPERS.OUTER_SAMPLE, KEY)
    m.add_wrapper_with_key(WRAPPERS.OUTER_SAMPLE, KEY, _outer_sample)
    _ensure_call_wrapper(m)
    return m, recorder


def _ensure_call_wrapper(m):
    m.remove_wrappers_with_key(WRAPPERS.DIFFUSION_MODEL, KEY)
    m.add_wrapper_with_key(WRAPPERS.DIFFUSION_MODEL, KEY, _diffusion_model_wrapper)


def _outer_sample(executor, *args, **kwargs):
    """A fresh RunState per sampling run, tagged with the sampler node that runs it and, when
    done, with the fingerprint of the latent it returns (how the preview finds its route).
    Before the first step: the references the conditioning holds and the regions on this
    canvas are checked (``references.run_conditions``)."""
    guider = executor.class_obj
    attached = guider.model_options["transformer_options"].get(ATTACHMENT)
    if attached is None:
        return executor(*args, **kwargs)
    noise = args[0] if args else kwargs["noise"]
    methods = families.reference_methods(guider)
    if attached.modulates_blocks:
        references.check_subject_methods(methods, "MUSAR subjects" if attached.has_subjects else
                                          "References isolated on FLUX.1 (modulated by the pack)")
    elif attached.routes_references and attached.schedule.settings.condition_cache:
        references.check_cache_methods(methods)
    n_refs = 0
    if attached.routes_references:
        n_refs = references.reference_count(
            [len(c.get("reference_latents") or ()) for conds in guider.conds.values()
             for c in conds], attached.references)
    patch = guider.model_patcher.model.diffusion_model.patch_size
    conditions = references.run_conditions(attached.subjects.subjects, attached.references, n_refs,
                                           families.grid_of(noise.shape[-2], noise.shape[-1], patch))
    context = get_executing_context()
    run = attached.recorder.begin(None if context is None else (context.prompt_id, context.node_id))
    run.conditions = conditions
    guider.model_options["transformer_options"][RUN] = run  # a per-sample copy, not the MODEL's
    try:
        out = executor(*args, **kwargs)
    finally:  # done, failed or cancelled anywhere: no condition cache outlives its run
        run.release()
    run.output = session.fingerprint(out)
    return out


def _diffusion_model_wrapper(executor, *args, **kwargs):
    dm = executor.class_obj
    call_args = families.CallArgs.bind(dm, args, kwargs)
    x, context, to = call_args.get("x"), call_args.get("context"), call_args.get("transformer_options")
    grid = families.grid_of(x.shape[-2], x.shape[-1], dm.patch_size)
    refs = tuple(families.tokens_of(r, dm.patch_size) for r in call_args.get("ref_latents") or ())
    attached = to.get(ATTACHMENT)
    if attached is None or not attached.active:
        base = TokenLayout(context.shape[1], grid[0] * grid[1], extra_len=sum(refs))
        with session.activate(session.MusarCall(base, model=dm)):
            return call_args.call(executor)
    schedule = to.get("sample_sigmas")
    routed = attached.routes_references
    shape = planning.CallShape(
        prompt_len=context.shape[1], grid=grid, extra_len=0 if routed else sum(refs),
        reference_lens=refs if routed else (), batch=x.shape[0],
        kinds=tuple(to.get("cond_or_uncond", [0])), sigma=float(to["sigmas"].max()),
        device=x.device, schedule=None if schedule is None else tuple(schedule.tolist()),
        inputs=_cache_inputs(attached, call_args))
    run = to.get(RUN) or attached.recorder.latest or attached.recorder.begin()
    conditions = getattr(run, "conditions", None)
    clean = None if not attached.modulates_blocks else functools.partial(
        _clean_vec, dm, call_args.get("y"), call_args.get("guidance") is not None, x.shape[0])
    call = planning.plan_call(attached, run, shape, getattr(conditions, "regions", None), model=dm,
                              clean_vector=clean, weights=getattr(conditions, "weights", ()))
    if call.cached and routed:  # the references' keys and values come from the cache
        call_args.set(ref_latents=None)
    extra = call_args.get("kwargs") or {}  # FLUX takes a conditioning mask here (Qwen by name)
    if extra.get("attention_mask") is not None:
        logger.warning("MUSAR: a conditioning attention_mask cannot be combined with routed "
                       "tokens and is not applied")
        call_args.set(kwargs={**extra, "attention_mask": None})
    if not call.cached and attached.has_subjects:
        _, caps = attached.tokens(x.device, x.dtype)
        call_args.set(context=torch.cat(
            [context] + [c.to(context).expand(context.shape[0], -1, -1) for c in caps], 1))
    # Routed attention goes in per call, around whatever attention override the MODEL has now:
    # a node applied after this one (core's ModelAttentionBackend) replaces the MODEL's
    # override, and routing must stay on whatever the order.
    override = to.get("optimized_attention_override")
    if not getattr(override, "musar", False):
        call_args.set(transformer_options={**to, "optimized_attention_override": _AttentionOverride(override)})
    with session.activate(call):
        out = call_args.call(executor)
    _check_hooks_ran(call, attached.modulates_blocks)
    call.finish()
    return out


def _cache_inputs(attached, call_args) -> tuple:
    """What the cached conditions' keys and values depend on besides the layout (the subjects
    are the attachment's own): the reference latents, their method, the pooled vector and the
    guidance of this call. Nothing when the cache is off."""
    if not attached.schedule.settings.condition_cache:
        return ()
    extra = call_args.get("kwargs") or {}
    return (tuple(call_args.get("ref_latents") or ()), extra.get("ref_latents_method"),
            call_args.get("y"), call_args.get("guidance"), call_args.get("additional_t_cond"))


def _check_hooks_ran(call, subjects: bool) -> None:
    """After the first model call: a ComfyUI that stopped calling a hook would otherwise sample
    without routing and say nothing."""
    if call.hook_calls["attention"] == 0:
        raise hooks.hook_error("transformer_options['optimized_attention_override']",
                               "was not called by the FLUX forward",
                               "MUSAR routes attention through it; without it nothing is routed")
    if subjects and not call.cached and call.hook_calls["block"] == 0:
        raise hooks.hook_error("patches_replace['dit'] block patches",
                               "were not called by the FLUX forward",
                               "MUSAR subjects and isolated FLUX.1 references need them for "
                               "their per-segment modulation")


def _clean_vec(dm, y, with_guidance: bool, batch: int, like: torch.Tensor) -> torch.Tensor:
    return flux_forward.clean_vector(dm, y, with_guidance, batch, like.device, like.dtype,
                                     embed=timestep_embedding)


def _post_input(args):
    call = session.ACTIVE.get()
    if call is None or not call.routed or call.cached:
        return args
    img, b = args["img"], args["img"].shape[0]
    packed, _ = call.attachment.tokens(img.device, img.dtype)
    with call.subject_img_in():
        ic = call.model.img_in(packed)
    ids = call.attachment.ids.to(args["img_ids"])
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
        if call is not None:
            call.hook_calls["block"] += 1
        if call is None or not call.routed or call.cached:
            return extra["original_block"](args)
        vec, lay = args["vec"], call.layout
        if not isinstance(vec, torch.Tensor) or vec.ndim != 2:
            raise hooks.hook_error(f"the FLUX {self.kind} patch's args['vec']",
                                   f"arrived as {hooks.describe(vec)}, not one (batch, width) vector",
                                   "MUSAR subjects modulate per segment from FLUX.1's vector")
        mod = hooks.block_modulation()
        pair = mod.stack(vec, call.clean_vec(vec))
        kw = {"pe": args["pe"], "attn_mask": args.get("attn_mask")}
        if mod.options:
            kw["transformer_options"] = args["transformer_options"]
        with call.paired_modulation():
            if self.kind == "double_block":
                img, txt = call.model.double_blocks[self.index](
                    img=args["img"], txt=args["txt"], vec=pair, **kw,
                    modulation_dims_img=lay.modulation_dims("img"),
                    modulation_dims_txt=lay.modulation_dims("txt"))
                return {"img": img, "txt": txt}
            out = call.model.single_blocks[self.index](
                args["img"], vec=pair, modulation_dims=lay.modulation_dims("joint"), **kw)
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
        if args:  # optimized_attention_masked(q, k, v, heads, mask, ...) passes the mask by position
            mask, args = args[0], args[1:]

        def kernel(q_, k_, v_, mask_=None):
            kw = dict(kwargs, skip_reshape=True, mask=mask_, transformer_options=transformer_options)
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, heads, *args, **kw)
            return func(q_, k_, v_, heads, *args, **kw)

        kernel.lse = attention.SDPA_LSE if hooks.runs_sdpa(func, self.previous) else None
        call = session.ACTIVE.get()
        if call is None or not call.routed:
            return kernel(q, k, v, mask)
        call.hook_calls["attention"] += 1
        position = hooks.block_position(transformer_options or {})
        return block.block_attention(call, position, q, k, v, mask, kernel)
