"""State of MUSAR inference, and nothing else (the decisions live in ``planning``, the block
attention in ``attention``; the ComfyUI glue drives all three).

* ``Recorder``  - lives as long as the patched MODEL; remembers its recent sampling runs (which
                  sampler made them, a fingerprint of what they returned) so the preview node can
                  find the route of the images it is given.
* ``RunState``  - one sampling run: route scores of the last model call, the route used at every
                  step, the condition caches (``ConditionCache``, one per CFG branch).
* ``MusarCall`` - one diffusion-model call: layout, routing plan, flags. Published in the
                  ``ACTIVE`` context variable while the call runs, so the LoRA modules, block
                  patches and the attention override all see the same call.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .errors import RoutingError
from .layout import TokenLayout
from .regions import step_route
from .routes import RoutePlan

if TYPE_CHECKING:
    from .attachment import Attachment
    from .planning import Schedule
    from .settings import RoutingSettings

ACTIVE: contextvars.ContextVar[MusarCall | None] = contextvars.ContextVar("musar_call", default=None)
KEPT_RUNS = 16  # routes of this many recent runs stay available to the preview
KEPT_CACHES = 2  # condition caches per run: one per CFG branch (cond, uncond)


def fingerprint(samples: torch.Tensor) -> str:
    """Identity of a sampler's output latent (shape and exact values)."""
    data = samples.detach().float().cpu().contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


class ConditionCache:
    """The conditions' keys and values of every block, from one model call of one sampling run,
    for the later calls that fit it: the same CFG branch (``tag``: cond / uncond kinds, batch,
    condition lengths) and the same ``inputs`` the conditions depend on (reference latents,
    pooled vector, guidance), compared exactly. A call that does not fit builds a new cache; a
    cache is only used once the call that filled it has run every block (``complete``)."""

    def __init__(self, tag: tuple, inputs: tuple):
        self.tag, self.inputs = tag, inputs
        self.blocks: dict = {}  # block key -> (caption k, caption v, image-tail k, image-tail v)
        self.complete = False

    def fits(self, tag: tuple, inputs: tuple) -> bool:
        return tag == self.tag and len(inputs) == len(self.inputs) and all(
            _same(a, b) for a, b in zip(inputs, self.inputs))

    def store(self, block, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> None:
        """Copies (not views: the rest of the block's k / v is freed) of the condition tokens'
        keys and values: subject captions in the text stream, then the image stream's tail
        (routed references, subject images)."""
        txt, tail = _condition_spans(layout)
        self.blocks[block] = tuple(t[:, :, s].clone() for s in (txt, tail) for t in (k, v))

    def extend(self, block, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout):
        """The keys and values of every token of ``layout`` from a call that ran the prompt and
        the canvas only: the cached condition tokens put back in their places."""
        if block not in self.blocks:
            raise RuntimeError(f"MUSAR: the condition cache holds no keys for block {block}; the "
                               "call that filled it ran other blocks (another patch changed them)")
        kt, vt, ki, vi = self.blocks[block]
        P = layout.prompt_len
        return (torch.cat([k[:, :, :P], kt, k[:, :, P:], ki], 2),
                torch.cat([v[:, :, :P], vt, v[:, :, P:], vi], 2))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.blocks.values() for t in ts)


def _condition_spans(layout: TokenLayout) -> tuple[slice, slice]:
    return slice(layout.prompt_len, layout.txt_len), slice(layout.txt_len + layout.canvas_len,
                                                            layout.total)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and \
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and \
            len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class RunState:
    def __init__(self, sampler: tuple | None = None):
        self.sampler = sampler  # (prompt id, node id) of the sampler node that started the run
        self.output: str | None = None  # fingerprint of the latent the run returned
        self.last_scores: dict[int, torch.Tensor] = {}  # cond_or_uncond kind -> (b, x_len, N)
        self.routes: list[tuple[float, torch.Tensor]] = []  # (sigma, (b, x_len) int16) per step
        self.grid: tuple[int, int] | None = None
        self.caches: list[ConditionCache] = []  # condition caches, latest last
        self.conditions = None  # references.Conditions: names, colours, regions of the run
        self._route_sigma: float | None = None
        self._route: torch.Tensor | None = None

    def route_for(self, sigma: float, kinds: list[int], grid, threshold: float, smoothing: int,
                  regions=None, batch: int = 1) -> torch.Tensor | None:
        """Route of this step from the previous step's scores and the layout regions
        (``regions.step_route``; ``batch`` images when no scores exist yet). It is computed once
        per step (sigma) and the conditional pass's scores decide for cond and uncond alike, so
        CFG's two passes use one spatially consistent route even when ComfyUI runs them apart.
        Every image of the batch keeps its own route (recorded per image for the preview)."""
        if self._route_sigma != sigma:
            scores = self.last_scores.get(0, self.last_scores.get(1))
            self._route_sigma = sigma
            self._route = step_route(scores, grid, threshold, smoothing, regions, batch)
            if self._route is not None:
                self.routes.append((sigma, self._route.to(torch.int16).cpu()))
        return None if self._route is None else self._route.repeat(len(kinds), 1)

    def condition_cache(self, tag: tuple, inputs: tuple) -> tuple[ConditionCache, bool]:
        """The cache for a call of this branch and inputs, and whether it can be used (it is
        complete); a new one (the oldest dropped beyond ``KEPT_CACHES``) when none fits."""
        for cache in self.caches:
            if cache.fits(tag, inputs):
                if cache.complete:
                    return cache, True
                self.caches.remove(cache)  # a call that filled it stopped part-way
                break
        self.caches = [*self.caches[-(KEPT_CACHES - 1):], ConditionCache(tag, inputs)]
        return self.caches[-1], False

    def release(self) -> None:
        """Drop what only the running sampler needs (caches, scores); keep the routes."""
        self.caches, self.last_scores, self._route = [], {}, None


class Recorder:
    """Shared by a patched MODEL and the routing wire to the preview: its recent sampling runs.
    ``patched`` False: a routing node that left the MODEL as it was (strength 0) - no runs;
    ``routes`` False: its settings route no image token (dynamic routing off, no hard region)."""

    def __init__(self, captions: tuple[str, ...], patched: bool = True, routes: bool = True):
        self.captions = captions if patched else ()
        self.patched = patched
        self.routes = routes
        self.runs: list[RunState] = []

    @property
    def latest(self) -> RunState | None:
        return self.runs[-1] if self.runs else None

    def begin(self, sampler: tuple | None = None) -> RunState:
        for old in self.runs:
            old.release()
        self.runs = [*self.runs[-(KEPT_RUNS - 1):], RunState(sampler)]
        return self.runs[-1]

    def find(self, output: str | None = None, prompt_id: str | None = None) -> RunState | None:
        """The run whose route belongs to the images the caller is given: with ``output`` (the
        fingerprint of the sampler's LATENT) the run that returned it; without it the latest run
        of this prompt (else of the latest prompt) - refused when several samplers made those."""
        if output is not None:
            for run in reversed(self.runs):
                if run.output == output:
                    return run
            raise RoutingError("the LATENT connected to 'samples' was not made by a sampler with "
                               "this MUSAR Apply Routing's MODEL (or was changed after sampling): "
                               "connect the LATENT output of the sampler whose images you preview")
        if not self.runs:
            return None
        prompt = prompt_id if any(r.sampler and r.sampler[0] == prompt_id for r in self.runs) \
            else (self.latest.sampler or (None,))[0]
        runs = [r for r in self.runs if (r.sampler or (None,))[0] == prompt]
        samplers = sorted({str(r.sampler[1]) for r in runs if r.sampler and r.sampler[1] is not None})
        if len(samplers) > 1:
            raise RoutingError(f"this MUSAR Apply Routing fed {len(samplers)} samplers (nodes "
                               f"{', '.join(samplers)}), so the route of these images is ambiguous: "
                               "connect the sampler's LATENT output to the preview's 'samples'")
        return runs[-1] if runs else self.latest

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass
class MusarCall:
    """One diffusion-model call, built by ``planning.plan_call`` (or, for a MODEL that carries
    only a dual LoRA, by the glue with its layout alone)."""

    layout: TokenLayout
    plan: RoutePlan = dataclasses.field(default_factory=RoutePlan)
    settings: RoutingSettings | None = None  # what the user chose (None: nothing routed)
    schedule: Schedule | None = None  # the settings resolved for the model
    run: RunState | None = None
    kinds: list[int] = dataclasses.field(default_factory=lambda: [0])
    collect: bool = False  # compute route scores in the routing blocks (the next step uses them)
    cache: ConditionCache | None = None  # with condition_cache on: the cache this call reads or fills
    cached: bool = False  # condition-cache step: conditions' keys/values come from ``cache``
    attachment: Attachment | None = None  # what the patched MODEL carries (subjects, references)
    model: torch.nn.Module | None = None  # the diffusion model (ComfyUI's Flux module) running it
    clean_vector: Callable[[torch.Tensor], torch.Tensor] | None = None  # like -> condition vector
    img_in_mode: str = "noisy"
    paired: bool = False  # a block runs with stacked [sampling, clean-condition] modulation
    hook_calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    _clean: torch.Tensor | None = None
    _scores: torch.Tensor | None = None
    _n_scores: int = 0
    _classes: dict = dataclasses.field(default_factory=dict)

    @property
    def routed(self) -> bool:
        """The call routes something (an attachment is present)."""
        return self.attachment is not None

    def clean_vec(self, like: torch.Tensor) -> torch.Tensor:
        """The condition modulation vector (timestep 0, guidance 1), computed once per call."""
        if self._clean is None:
            self._clean = self.clean_vector(like)
        return self._clean

    def token_classes(self, stream: str) -> torch.Tensor:
        if stream not in self._classes:
            self._classes[stream] = self.layout.token_classes(stream)
        return self._classes[stream]

    def add_scores(self, mass: torch.Tensor) -> None:
        self._scores = mass if self._scores is None else self._scores + mass
        self._n_scores += 1

    def finish(self) -> None:
        """Store this call's route scores per cond/uncond kind for the next step; the cache this
        call filled is complete."""
        if self.cache is not None and not self.cached:
            self.cache.complete = True
        if self.run is None:
            return
        if self._scores is not None:
            per = self._scores.shape[0] // max(1, len(self.kinds))
            mean = (self._scores / self._n_scores).cpu()
            for j, kind in enumerate(self.kinds):
                self.run.last_scores[kind] = mean[j * per:(j + 1) * per]

    @contextlib.contextmanager
    def paired_modulation(self):
        """While MUSAR's block patch runs a block with the stacked modulation vectors."""
        previous, self.paired = self.paired, True
        try:
            yield
        finally:
            self.paired = previous

    @contextlib.contextmanager
    def subject_img_in(self):
        previous, self.img_in_mode = self.img_in_mode, "subject"
        try:
            yield
        finally:
            self.img_in_mode = previous


@contextlib.contextmanager
def activate(call: MusarCall):
    token = ACTIVE.set(call)
    try:
        yield call
    finally:
        ACTIVE.reset(token)
