"""The per-call decision of MUSAR inference, as plain functions (no ComfyUI).

``resolve`` turns the user's ``RoutingSettings`` into a ``Schedule`` for one model (the sigma
window of dynamic routing, the routing blocks). ``plan_call`` decides, for one diffusion-model
call, the token layout, the routing plan (route of this step or static), whether the condition
cache is hit and whether route scores are worth collecting; it updates the run's state and
builds the whole ``MusarCall`` the block patches, the attention and the LoRA modules read. The
ComfyUI glue (``nodes/patcher.py``) only translates ComfyUI's call into ``CallShape``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .layout import TokenLayout
from .regions import RegionMap
from .routes import RoutePlan, parse_blocks
from .session import MusarCall, RunState
from .settings import RoutingSettings

if TYPE_CHECKING:
    from .attachment import Attachment


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    """``RoutingSettings`` resolved for one model: when (the sigma window) and where (the
    routing blocks) dynamic routing runs."""

    settings: RoutingSettings
    sigma_start: float = float("inf")  # dynamic routing runs while sigma_end <= sigma <= sigma_start
    sigma_end: float = 0.0
    blocks: frozenset = frozenset()  # {("double" | "single", index)} whose attention scores count
    hard_regions: bool = False  # a condition has a hard region: route by it even without scores

    def dynamic_at(self, sigma: float) -> bool:
        return self.settings.dynamic_routing and self.sigma_end <= sigma <= self.sigma_start

    @property
    def routes(self) -> bool:
        """Image tokens are routed at all: by scores (dynamic routing) or by hard regions."""
        return self.settings.dynamic_routing or self.hard_regions

    def routes_at(self, sigma: float) -> bool:
        """A route applies at ``sigma``: inside the window, by scores or by hard regions."""
        return self.routes and self.sigma_end <= sigma <= self.sigma_start


def resolve(settings: RoutingSettings, percent_to_sigma: Callable[[float], float], depth: int,
            single_depth: int, hard_regions: bool = False) -> Schedule:
    """``percent_to_sigma`` is the model's schedule (ComfyUI: model_sampling.percent_to_sigma);
    routing block indices are checked against the model's ``depth`` / ``single_depth``."""
    blocks = parse_blocks(settings.routing_blocks, depth, single_depth)
    return Schedule(settings=settings, sigma_start=float(percent_to_sigma(settings.start_percent)),
                   sigma_end=float(percent_to_sigma(settings.end_percent)),
                   blocks=blocks if settings.dynamic_routing else frozenset(),
                   hard_regions=hard_regions)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallShape:
    """What one diffusion-model call looks like, read from the sampler."""

    prompt_len: int  # main prompt tokens
    grid: tuple[int, int]  # canvas token grid (rows, cols)
    extra_len: int = 0  # unrouted ReferenceLatent tokens after the canvas (behave as canvas)
    reference_lens: tuple[int, ...] = ()  # routed ReferenceLatent references, in order
    batch: int = 1  # rows of x (cond and uncond batched together count twice)
    kinds: tuple[int, ...] = (0,)  # cond_or_uncond of each batch chunk (0 = cond, 1 = uncond)
    sigma: float = 1.0  # this call's noise level
    schedule: tuple[float, ...] | None = None  # the sampler's sigmas, None outside a sampler
    device: object = None  # where the call runs (the route is moved there once per call)
    inputs: tuple = ()  # what cached conditions depend on besides the layout (compared exactly)


def plan_call(attachment: Attachment, run: RunState, shape: CallShape,
              regions: RegionMap | None = None, model: torch.nn.Module | None = None,
              clean_vector: Callable[[torch.Tensor], torch.Tensor] | None = None,
              weights: tuple[float, ...] = ()) -> MusarCall:
    """Layout, plan, cache hit and score collection of one call of the model that carries
    ``attachment``, given the regions (built for its canvas) and the attention weights of the
    run's conditions; the returned call also carries the ``model`` running it and the
    ``clean_vector`` function that gives the conditions' modulation vector."""
    schedule = attachment.schedule
    settings = schedule.settings
    layout = TokenLayout(shape.prompt_len, shape.grid[0] * shape.grid[1], attachment.caption_lens,
                         attachment.image_lens, shape.extra_len, shape.reference_lens,
                         attachment.clean_references)
    run.grid = shape.grid
    kinds = list(shape.kinds)
    route = None
    if layout.n_routed and schedule.routes_at(shape.sigma):
        fits = regions if regions is not None and regions.coverage.shape[0] == layout.n_routed else None
        route = run.route_for(shape.sigma, kinds, shape.grid, settings.threshold, settings.smoothing,
                              fits, max(1, shape.batch // max(1, len(kinds))))
    if route is not None and (route.shape[0] != shape.batch or int(route.max()) >= layout.n_routed):
        route = None  # another batch or other conditions than the route's (e.g. another sampler)
    if route is not None and shape.device is not None:
        route = route.to(shape.device)
    fits = len(weights) == layout.n_routed  # another call's conditions (e.g. the uncond): none
    plan = RoutePlan(settings.static_routing, route, settings.symmetric and route is not None,
                     settings.block_prompt_references, weights if fits else (), settings.isolate)
    cache, cached = None, False
    if settings.condition_cache:
        tag = (tuple(kinds), shape.batch, layout.caption_lens, layout.image_lens,
               layout.reference_lens, layout.extra_len)
        cache, cached = run.condition_cache(tag, shape.inputs)
    return MusarCall(layout, plan, settings=settings, schedule=schedule, run=run, kinds=kinds,
                     collect=layout.n_routed > 0 and _collect(schedule, shape), cached=cached,
                     cache=cache,
                     attachment=attachment, model=model, clean_vector=clean_vector)


def _collect(schedule: Schedule, shape: CallShape) -> bool:
    """Route scores are only worth computing when the next step will use a route."""
    if not schedule.settings.dynamic_routing:
        return False
    if shape.schedule is None:  # not called by a sampler: keep scores for any later call
        return shape.sigma >= schedule.sigma_end
    later = [s for s in shape.schedule if 0 < s < shape.sigma]
    return bool(later) and schedule.dynamic_at(max(later))
