"""Per-run and per-call state of MUSAR inference (pure Python; the ComfyUI glue drives it).

* ``RoutingSettings`` - what the user chose (frozen).
* ``Recorder``        - lives as long as the patched MODEL; remembers the latest sampling run so
                        the preview node can draw its routes.
* ``RunState``        - one sampling run: route scores of the last model call, the route used
                        at every step, the condition cache.
* ``MusarCall``       - one diffusion-model call: layout, routing plan, flags. Published in the
                        ``ACTIVE`` context variable while the call runs, so the LoRA modules,
                        block patches and the attention override all see the same call.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import torch

from . import attention
from .errors import RoutingError
from .layout import TokenLayout
from .routing import RoutePlan, allowed_mask, route_from_scores

ACTIVE: contextvars.ContextVar[MusarCall | None] = contextvars.ContextVar("musar_call", default=None)


@dataclasses.dataclass(frozen=True)
class RoutingSettings:
    static: bool = True
    dynamic: bool = True
    sigma_start: float = float("inf")  # dynamic routing runs while sigma_end <= sigma <= sigma_start
    sigma_end: float = 0.0
    routing_blocks: frozenset = frozenset()
    threshold: float = 0.0
    smoothing: int = 3
    symmetric: bool = False
    strength: float = 1.0
    cache: bool = False
    position_mode: str = "shared"

    def __post_init__(self):
        if self.symmetric and not self.dynamic:
            raise RoutingError("symmetric routing restricts conditions to their routed region: "
                               "it needs dynamic routing on")
        if self.symmetric and self.cache:
            raise RoutingError("symmetric routing and the condition cache conflict (cached "
                               "conditions are not recomputed, so their routed view cannot "
                               "change): turn one of them off")
        if self.dynamic and not self.routing_blocks:
            raise RoutingError("dynamic routing needs at least one routing block")
        if self.smoothing < 1 or self.smoothing % 2 == 0:
            raise RoutingError(f"smoothing must be an odd window size >= 1, got {self.smoothing}")

    def dynamic_at(self, sigma: float) -> bool:
        return self.dynamic and self.sigma_end <= sigma <= self.sigma_start


class RunState:
    def __init__(self):
        self.last_scores: dict[int, torch.Tensor] = {}  # cond_or_uncond kind -> (b, x_len, N)
        self.routes: list[tuple[float, torch.Tensor]] = []  # (sigma, (b, x_len) route) per call
        self.grid: tuple[int, int] | None = None
        self.kv: dict = {}  # condition cache: block key -> (k, v) of condition tokens
        self.kv_batch: tuple | None = None
        self._route_sigma: float | None = None
        self._route: torch.Tensor | None = None

    def route_for(self, sigma: float, kinds: list[int], grid, settings: RoutingSettings
                  ) -> torch.Tensor | None:
        """Route of this step from the previous step's scores. It is computed once per step
        (sigma) and the conditional pass's scores decide for cond and uncond alike, so CFG's
        two passes use one spatially consistent route even when ComfyUI runs them apart."""
        if self._route_sigma != sigma:
            scores = self.last_scores.get(0, self.last_scores.get(1))
            self._route_sigma = sigma
            self._route = None if scores is None else route_from_scores(
                scores, grid, settings.threshold, settings.smoothing)
            if self._route is not None:
                self.routes.append((sigma, self._route[:1].to(torch.int16).cpu()))
        return None if self._route is None else self._route.repeat(len(kinds), 1)


class Recorder:
    """Shared by a patched MODEL and the preview handle."""

    def __init__(self, captions: tuple[str, ...]):
        self.captions = captions
        self.latest: RunState | None = None

    def begin(self) -> RunState:
        self.latest = RunState()
        return self.latest

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass
class MusarCall:
    layout: TokenLayout
    plan: RoutePlan = dataclasses.field(default_factory=RoutePlan)
    settings: RoutingSettings | None = None
    run: RunState | None = None
    kinds: list[int] = dataclasses.field(default_factory=lambda: [0])
    collect: bool = False
    cached: bool = False
    img_in_mode: str = "noisy"
    model: object = None  # the diffusion model (ComfyUI's Flux module) running this call
    source: object = None  # what the routing node attached (subjects, device caches)
    vec0: object = None  # callable(like) -> the clean-condition modulation vector
    _scores: torch.Tensor | None = None
    _n_scores: int = 0
    _classes: dict = dataclasses.field(default_factory=dict)

    def clean_vec(self, like: torch.Tensor) -> torch.Tensor:
        """The condition modulation vector (timestep 0, guidance 1), computed once per call."""
        if not isinstance(self.vec0, torch.Tensor):
            self.vec0 = self.vec0(like)
        return self.vec0

    def token_classes(self, stream: str) -> torch.Tensor:
        if stream not in self._classes:
            self._classes[stream] = self.layout.token_classes(stream)
        return self._classes[stream]

    def add_scores(self, mass: torch.Tensor) -> None:
        self._scores = mass if self._scores is None else self._scores + mass
        self._n_scores += 1

    def finish(self) -> None:
        """Store this call's route scores per cond/uncond kind for the next step."""
        if self.run is None:
            return
        if self._scores is not None:
            per = self._scores.shape[0] // max(1, len(self.kinds))
            mean = (self._scores / self._n_scores).cpu()
            for j, kind in enumerate(self.kinds):
                self.run.last_scores[kind] = mean[j * per:(j + 1) * per]

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


def block_attention(call: MusarCall, block, q, k, v, mask, kernel) -> torch.Tensor:
    """One FLUX block's joint attention under MUSAR: condition-cache bookkeeping, route scores
    in routing blocks, routed attention, and the strength blend of the canvas output.
    ``kernel(q, k, v, mask=None)`` is the model's attention function."""
    lay, settings, run = call.layout, call.settings, call.run
    P, C = lay.prompt_len, lay.canvas_len
    if call.cached:
        kt, vt, ki, vi = run.kv[block]
        k = torch.cat([k[:, :, :P], kt, k[:, :, P:], ki], 2)
        v = torch.cat([v[:, :, :P], vt, v[:, :, P:], vi], 2)
        q_x = q[:, :, P:P + lay.x_len]
    else:
        q_x = q[:, :, lay.x]
        if settings.cache:
            cond_txt, cond_img = slice(P, lay.txt_len), slice(lay.txt_len + C, lay.total)
            run.kv[block] = (k[:, :, cond_txt], v[:, :, cond_txt], k[:, :, cond_img], v[:, :, cond_img])
    if call.collect and block in settings.routing_blocks:
        call.add_scores(attention.subject_attention_mass(q_x, k, lay))
    if mask is not None:
        return _masked_fallback(call, q, k, v, mask, kernel)
    if call.cached:
        out = attention.routed_attention_cached(q, k, v, lay, call.plan, kernel)
        canvas = slice(P, P + C)
    else:
        out = attention.routed_attention(q, k, v, lay, call.plan, kernel)
        canvas = lay.canvas
    if settings.strength != 1.0:  # blend canvas output with its no-subject attention
        keys = torch.cat([torch.arange(P), torch.arange(lay.txt_len, lay.txt_len + C)]).to(q.device)
        base = kernel(q[:, :, canvas], k.index_select(2, keys), v.index_select(2, keys))
        out[:, canvas] = base + settings.strength * (out[:, canvas] - base)
    return out


def _masked_fallback(call, q, k, v, mask, kernel):
    """A caller-supplied attention mask (rare) is combined with the routing as a dense mask."""
    if call.cached:
        raise RuntimeError("MUSAR: attention masks cannot be combined with the condition cache")
    allowed = allowed_mask(call.layout, call.plan, q.shape[0]).to(q.device)[:, None]
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    return kernel(q, k, v, bias + mask)
