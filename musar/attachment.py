"""The **attachment**: what a routed MODEL carries (the ComfyUI glue keeps it in the options key
``musar_attachment``): the MUSAR subjects (caption tokens in the text stream, reference tokens
appended to the image stream), whether the conditioning's ReferenceLatent references are routed
(and their labels), the settings, their schedule for this model and the recorder of sampling
runs. Immutable and shared by clones.

``join`` holds the rules for a second routing node on a MODEL that already carries one (MUSAR
Apply Routing and MUSAR Route References share one attachment); ``check_regions`` the rule that
soft regions need dynamic routing; ``check_isolation`` the rules of isolation and the condition
cache.

The vocabulary of the sampling path, one name each: ``RoutingSettings`` (what the user chose,
musar/settings.py) -> ``Schedule`` (the settings resolved for one model, musar/planning.py) ->
``Attachment`` (what the patched MODEL carries, here) -> ``MusarCall`` (one model call: layout,
``RoutePlan``, run state; musar/session.py). The wire from the routing nodes to the preview
carries the attachment's ``Recorder``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .errors import RoutingError
from .layout import subject_ids
from .planning import Schedule
from .references import ReferenceLabels
from .session import Recorder
from .settings import RoutingSettings
from .subjects import SubjectSet


class Attachment:
    def __init__(self, subjects: SubjectSet, references: ReferenceLabels | None,
                 schedule: Schedule, recorder: Recorder,
                 process_latent_in: Callable[[torch.Tensor], torch.Tensor],
                 clean_references: bool = False):
        self.subjects, self.references = subjects, references
        # the routed references are modulated as MUSAR condition tokens (timestep 0, guidance 1)
        # by the pack's block patches: isolated references on FLUX.1 (``check_isolation``)
        self.clean_references = clean_references
        self.schedule, self.recorder = schedule, recorder
        self.process_latent_in = process_latent_in  # VAE latent -> model latent space
        grids = [s.grid for s in subjects.subjects]
        ids = subject_ids(grids, schedule.settings.positions)
        self.ids = torch.cat([torch.zeros(0, 3)] + [i if s.keep is None else i[s.keep]
                                                    for i, s in zip(ids, subjects.subjects)])
        self.caption_lens = tuple(s.caption_tokens.shape[1] for s in subjects.subjects)
        self.image_lens = tuple(s.n_tokens for s in subjects.subjects)
        self._device_cache: dict = {}

    @property
    def has_subjects(self) -> bool:
        return len(self.subjects) > 0

    @property
    def routes_references(self) -> bool:
        return self.references is not None

    @property
    def modulates_blocks(self) -> bool:
        """The pack runs the FLUX.1 blocks with per-segment modulation (subjects, or references
        modulated as conditions)."""
        return self.has_subjects or self.clean_references

    @property
    def active(self) -> bool:
        """Anything to route: subjects, or the conditioning's references."""
        return self.has_subjects or self.routes_references

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


def check_regions(subjects: SubjectSet, references: ReferenceLabels | None,
                  settings: RoutingSettings) -> None:
    """Soft regions bias the dynamic route's scores: without dynamic routing they could do
    nothing, so that is refused rather than silently ignored."""
    regions = [s.region for s in subjects.subjects]
    regions += [lab.region for lab in (references.labels if references is not None else ())]
    if not settings.dynamic_routing and any(r is not None and r.mode == "soft" for r in regions):
        raise RoutingError("a soft MUSAR Layout Region biases the dynamic route, but dynamic_routing "
                           "is off: turn dynamic_routing on, or make the region hard (hard regions "
                           "route without it)")


def check_isolation(subjects: SubjectSet, references: ReferenceLabels | None,
                    settings: RoutingSettings, per_block_modulation: bool) -> bool:
    """The rules of ``isolate`` and ``condition_cache`` for one routing (before sampling);
    returns whether the references are to be modulated as conditions by the pack (isolated
    references on a model with FLUX.1's per-block modulation: their hidden states then do not
    depend on the step, which the exact cache needs; FLUX.2 and Qwen-Image take a fixed
    timestep from ComfyUI's ``index_timestep_zero`` instead, checked when sampling starts)."""
    if references is None:
        return False
    if settings.condition_cache and not settings.isolate:
        raise RoutingError("condition_cache on MUSAR Route References is exact only for isolated "
                           "references (otherwise they see the canvas, which changes every step): "
                           "turn isolate on, or condition_cache off (core's Flux KV Cache node "
                           "offers the approximate cache)")
    if settings.isolate and settings.strength != 1.0:
        raise RoutingError(f"strength {settings.strength} blends in the unrouted attention, in "
                           "which references see the canvas, and isolate forbids that: set "
                           "strength to 1 or turn isolate off")
    return settings.isolate and per_block_modulation and not len(subjects)


def join(previous: Attachment | None, settings: RoutingSettings, subjects: SubjectSet | None = None,
         references: ReferenceLabels | None = None):
    """(subjects, references, settings) of one routing when a routing node (MUSAR Apply Routing:
    ``subjects``; MUSAR Route References: ``references``) patches a MODEL another one already
    routed: subjects and references join under the later node's settings; the subjects keep
    their position ids and the references their prompt blocking from the node that set them."""
    if previous is None:
        return subjects or SubjectSet(), references, settings
    if previous.schedule.settings.condition_cache or settings.condition_cache:
        raise RoutingError("condition_cache cannot cache MUSAR subjects and routed references on "
                           "one MODEL: turn condition_cache off on both routing nodes (the later "
                           "node's settings apply to both)")
    if subjects is not None:
        if previous.has_subjects:
            raise RoutingError(f"this MODEL already went through MUSAR Apply Routing (subjects "
                               f"{list(previous.recorder.captions)}); a second one cannot add to "
                               "it: chain every MUSAR Subject into one Apply Routing")
        if previous.clean_references:
            raise RoutingError("the MUSAR Route References before this node isolates its "
                               "references on FLUX.1, which modulates them as condition tokens; "
                               "with MUSAR subjects on the same MODEL, put MUSAR Apply Routing "
                               "first, or turn isolate off there")
        block = previous.schedule.settings.block_prompt_references
        return subjects, previous.references, dataclasses.replace(settings, block_prompt_references=block)
    if previous.routes_references:
        raise RoutingError("this MODEL already went through MUSAR Route References; use one per "
                           "MODEL")
    positions = previous.schedule.settings.positions
    return previous.subjects, references, dataclasses.replace(settings, positions=positions)
