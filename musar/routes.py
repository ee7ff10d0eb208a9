"""Static and dynamic attention routing: which queries may see which keys.

Static routing (the paper's mask; rows = queries, columns = keys)::

    q \\ k | own C_i | other C_j | P  | X
    C_i    |  yes    |   no      | no | yes
    P      |  no     |   no      | yes| yes
    X      |  yes    |   yes     | yes| yes

Routed references (ReferenceLatent tokens R_j, MUSAR Route References) are conditions too: no
condition sees another. A reference and the prompt see each other unless the plan blocks
prompt <-> reference attention (``block_prompt_references``, off by default [chosen])::

    q \\ k | R_j     | other R_k | C_i | P       | X
    R_j    | yes     | no        | no  | yes (1) | yes
    P      | yes (1) | yes (1)   | no  | yes     | yes
    (1) no when prompt <-> reference blocking is on

Isolation (``RoutePlan.isolated``, the ``isolate`` setting; our extension [chosen], not the
paper's): every condition's queries see only the condition's own tokens (a subject: its caption
and image tokens; a reference: its tokens), whatever the rest of the plan. The prompt and the
canvas still see the conditions as the plan allows. An isolated condition whose modulation does
not depend on the step has the same hidden states, keys and values at every step, which is what
makes the condition cache exact (``session.ConditionCache``).

Reference strength: ``RoutePlan.weights`` holds one weight per routed entity (1 for subjects);
a canvas query's softmax mass on entity i's keys is multiplied by ``weights[i]`` (its logits
raised by log w; 0 = the canvas does not see it). The executors apply it per key segment, exactly,
without a mask; ``key_bias`` gives the dense reference's additive bias (tests only).

Dynamic routing [chosen reconstruction]: every X token p is routed to one condition r(p)
(argmax of its attention mass on each condition's image keys) and then sees only that
condition (plus P and the canvas); background tokens (no condition above the threshold) see no
condition; unrouted tokens (``UNROUTED``, outside every hard region when the route has no
scores) see every condition, as under static routing. With ``symmetric``, condition i's
queries see only the X tokens that see it.

A plan is turned into *query groups*: a set of queries and the keys they may all see. Routed
attention (``attention.py``) runs the model's own attention kernel once per group, so no
L x L mask is ever built. ``allowed_mask`` builds that dense mask for tests only.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from .errors import RoutingError
from .layout import TokenLayout

BACKGROUND = -1  # a canvas token that sees no condition
UNROUTED = -2  # a canvas token that sees every condition, as under static routing alone


@dataclasses.dataclass(frozen=True)
class RoutePlan:
    static: bool = True
    route: torch.Tensor | None = None  # (B, x_len) int64 routed-entity index, BACKGROUND, UNROUTED
    symmetric: bool = False
    block_prompt_references: bool = False  # static routing also blocks prompt <-> routed references
    weights: tuple[float, ...] = ()  # per routed entity: the canvas's attention weight on it (1 = as is)
    isolated: bool = False  # every condition sees only its own tokens

    def __post_init__(self):
        if self.symmetric and self.isolated:
            raise RoutingError("symmetric routing lets each condition see the canvas tokens routed "
                               "to it, which isolation forbids: turn symmetric or isolate off")
        if self.symmetric and self.route is None:
            raise RoutingError("symmetric routing needs a dynamic route (enable dynamic routing)")
        if any(not 0.0 <= w <= 1.0 for w in self.weights):
            raise RoutingError(f"reference strengths must be from 0 to 1, got {self.weights}")

    def weighted(self, layout: TokenLayout) -> tuple[tuple[slice, float], ...]:
        """(segment, weight) of every routed entity whose weight is not 1."""
        return tuple((seg, w) for i, w in enumerate(self.weights[:layout.n_routed]) if w != 1.0
                     for seg in layout.condition(i))

    @property
    def is_dense(self) -> bool:
        return not self.static and self.route is None and not self.isolated and \
            all(w == 1.0 for w in self.weights)


@dataclasses.dataclass(frozen=True)
class Group:
    """Queries ``q`` (a slice or index tensor into the joint sequence) that all see keys ``k``
    (a slice, an index tensor, or None for every key). ``q_parts`` / ``k_parts`` list the same
    sets as segments (non-empty slices) when they are unions of segments, else are empty: the
    executor then runs the kernel on slice views instead of gathering with an index tensor."""

    q: slice | torch.Tensor
    k: slice | torch.Tensor | None
    kind: str = "canvas"  # "prompt", "condition" or "canvas": which queries the group holds
    q_parts: tuple[slice, ...] = ()
    k_parts: tuple[slice, ...] = ()
    k_weights: tuple[tuple[slice, float], ...] = ()  # key segments whose softmax mass is scaled


def _group(q, k, kind: str, device=None, weights: tuple = ()) -> Group:
    """Group from segment lists (or a ready index tensor / None), keeping the segments;
    ``weights``: the plan's weighted segments, kept where the group sees them."""

    def full(x):
        if not isinstance(x, list):
            return x
        return x[0] if len(x) == 1 else _cat(x, device)

    def segments(x) -> tuple[slice, ...]:
        return tuple(p for p in x if p.stop > p.start) if isinstance(x, list) else ()

    seen = segments(k)
    kept = tuple((s, w) for s, w in weights if k is None or any(
        p.start <= s.start and s.stop <= p.stop for p in seen))
    return Group(full(q), full(k), kind, segments(q), seen, kept)


def runs(parts) -> list[slice]:
    """The non-empty segments, adjacent ones joined, in sequence order."""
    merged: list[slice] = []
    for p in sorted((p for p in parts if p.stop > p.start), key=lambda s: s.start):
        if merged and merged[-1].stop == p.start:
            merged[-1] = slice(merged[-1].start, p.stop)
        else:
            merged.append(p)
    return merged


def _cat(parts: list[slice], device=None) -> torch.Tensor | slice:
    merged = runs(parts)
    if len(merged) == 1:
        return merged[0]
    return torch.cat([torch.arange(p.start, p.stop, device=device) for p in merged])


def _cond(layout: TokenLayout, i: int) -> list[slice]:
    return list(layout.condition(i))


def _sees_prompt(layout: TokenLayout, plan: RoutePlan, i: int) -> bool:
    """Under static routing a subject's condition and the prompt never see each other (the
    paper's mask); a routed reference and the prompt do unless the plan blocks them [chosen:
    not blocked, the reference models were trained with the prompt seeing the references]."""
    return layout.is_reference(i) and not plan.block_prompt_references


def _prompt_keys(layout: TokenLayout, plan: RoutePlan) -> list[slice]:
    refs = [layout.reference(j) for j in range(layout.n_references)
            if _sees_prompt(layout, plan, layout.n_subjects + j)]
    return [layout.prompt, layout.canvas, *refs]


def _static_keys(layout: TokenLayout, plan: RoutePlan, i: int) -> list[slice]:
    own = _cond(layout, i) + [layout.canvas]
    return own + [layout.prompt] if _sees_prompt(layout, plan, i) else own


def _condition_keys(layout: TokenLayout, plan: RoutePlan, i: int) -> list[slice] | None:
    """What condition i's queries see without a symmetric route: its own tokens when isolated,
    the static table's row under static routing, else every key (None)."""
    if plan.isolated:
        return _cond(layout, i)
    return _static_keys(layout, plan, i) if plan.static else None


def static_groups(layout: TokenLayout, plan: RoutePlan, device=None) -> list[Group]:
    """Query groups shared by every batch element (no dynamic route)."""
    n = layout.n_routed
    prompt_keys = _prompt_keys(layout, plan) if plan.static and n else None
    groups = [_group([layout.prompt], prompt_keys, "prompt", device)]
    for i in range(n):
        groups.append(_group(_cond(layout, i), _condition_keys(layout, plan, i), "condition", device))
    groups.append(_group([layout.canvas], None, "canvas", weights=plan.weighted(layout)))
    return [g for g in groups if _size(g.q) > 0]


def _symmetric_keys(layout: TokenLayout, plan: RoutePlan, i: int, route: torch.Tensor, device):
    """Condition i under a symmetric route: itself, the unrouted references E and the canvas
    tokens that see it (routed to i, or unrouted), plus the prompt where it may see it."""
    seen = _index(_cat(_cond(layout, i) + [layout.extra], device), device)
    routed_x = torch.nonzero((route == i) | (route == UNROUTED)).flatten() + layout.x.start
    keys = torch.cat([seen, routed_x.to(seen.device)])
    if not plan.static or _sees_prompt(layout, plan, i):
        keys = torch.cat([_index(layout.prompt, device), keys])
    return keys


def dynamic_groups(layout: TokenLayout, plan: RoutePlan, route: torch.Tensor, device=None
                   ) -> list[Group]:
    """Query groups of one batch element under a dynamic route (x_len,) of routed-entity ids
    (or BACKGROUND / UNROUTED)."""
    n, x0 = layout.n_routed, layout.x.start
    everything = [layout.prompt, layout.canvas] + [s for i in range(n) for s in _cond(layout, i)]
    groups = [_group([layout.prompt], _prompt_keys(layout, plan) if plan.static else None,
                     "prompt", device)]
    for i in range(n):
        keys = _symmetric_keys(layout, plan, i, route, device) if plan.symmetric \
            else _condition_keys(layout, plan, i)
        groups.append(_group(_cond(layout, i), keys, "condition", device))
    for i in [UNROUTED, BACKGROUND, *range(n)]:
        q = torch.nonzero(route == i).flatten() + x0
        if q.numel():
            seen = None if i == UNROUTED else [layout.prompt, layout.canvas] + (
                _cond(layout, i) if i >= 0 else [])
            groups.append(_group(q.to(device), seen, "canvas", device, plan.weighted(layout)))
    if layout.extra_len:
        groups.append(_group([layout.extra], everything, "canvas", device, plan.weighted(layout)))
    return [g for g in groups if _size(g.q) > 0]


def plan_groups(layout: TokenLayout, plan: RoutePlan, b: int = 0, device=None) -> list[Group]:
    """The query groups of batch element ``b`` under ``plan``."""
    if plan.route is None:
        return static_groups(layout, plan, device)
    return dynamic_groups(layout, plan, plan.route[b], device)


def _index(s: slice | torch.Tensor, device=None) -> torch.Tensor:
    return s if isinstance(s, torch.Tensor) else torch.arange(s.start, s.stop, device=device)


def _size(s: slice | torch.Tensor) -> int:
    return s.numel() if isinstance(s, torch.Tensor) else s.stop - s.start


def allowed_mask(layout: TokenLayout, plan: RoutePlan, batch: int) -> torch.Tensor:
    """Dense (B, L, L) boolean mask of the plan. Slow reference for tests only."""
    L = layout.total
    mask = torch.zeros(batch, L, L, dtype=torch.bool)
    for b in range(batch):
        for g in plan_groups(layout, plan, b):
            q = _index(g.q)
            if g.k is None:
                mask[b, q] = True
            else:
                mask[b, q[:, None], _index(g.k)[None, :]] = True
    return mask


def key_bias(layout: TokenLayout, plan: RoutePlan, batch: int) -> torch.Tensor:
    """Dense (B, L, L) additive logit bias of the plan's weights (log w; -inf for weight 0) on
    the keys each group weights. Slow reference for tests only."""
    L = layout.total
    bias = torch.zeros(batch, L, L)
    for b in range(batch):
        for g in plan_groups(layout, plan, b):
            q = _index(g.q)
            for seg, w in g.k_weights:
                bias[b, q[:, None], _index(seg)[None, :]] = math.log(w) if w > 0 else float("-inf")
    return bias


def allowed_fraction(layout: TokenLayout, plan: RoutePlan) -> float:
    """Allowed query-key pairs / all pairs: the ideal cost ratio of routed vs dense attention."""
    groups = plan_groups(layout, plan)
    pairs = sum(_size(g.q) * (layout.total if g.k is None else _size(g.k)) for g in groups)
    return pairs / layout.total ** 2


# ---- dynamic route --------------------------------------------------------------------------
def smooth_scores(scores: torch.Tensor, grid: tuple[int, int], smoothing: int = 1) -> torch.Tensor:
    """(B, x_len, N) route scores as float32, each condition's score map box-filtered with an
    odd window ``smoothing`` on the (rows, cols) token grid (1 = unchanged)."""
    b, n_x, n = scores.shape
    if grid[0] * grid[1] != n_x:
        raise RoutingError(f"route scores cover {n_x} tokens but the canvas grid is {grid}")
    s = scores.float()
    if smoothing > 1:
        maps = s.permute(0, 2, 1).reshape(b, n, *grid)
        maps = torch.nn.functional.avg_pool2d(maps, smoothing, stride=1, padding=smoothing // 2,
                                              count_include_pad=False)
        s = maps[..., :grid[0], :grid[1]].reshape(b, n, n_x).permute(0, 2, 1)
    return s


def argmax_route(scores: torch.Tensor, threshold: float = 0.0, mass: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """(B, x_len, N) scores -> (B, x_len) argmax route; BACKGROUND where the winner's attention
    mass (``mass``, default the scores themselves) is below ``threshold``."""
    route = scores.argmax(dim=-1)
    if threshold > 0:
        best = (scores if mass is None else mass).gather(-1, route[..., None])[..., 0]
        route = torch.where(best < threshold, torch.full_like(route, BACKGROUND), route)
    return route


_BLOCK_ITEM = re.compile(r"^(d|s)(\d+)(?:-(\d+))?$")


def parse_blocks(spec: str, depth: int | None = None, single_depth: int | None = None
                 ) -> frozenset[tuple[str, int]]:
    """Routing-block spec -> {("double"|"single", index)}.

    Comma-separated items: ``double``, ``single``, ``all``, ``d3``, ``d2-5``, ``s0-9``. Indices are
    checked against the model's depth (``depth`` double, ``single_depth`` single blocks); with no
    depth given only the syntax is checked (and an empty set returned)."""
    out: set[tuple[str, int]] = set()
    sizes = {"d": ("double", depth), "s": ("single", single_depth)}
    for raw in spec.replace(" ", "").lower().split(","):
        if raw in ("double", "single", "all"):
            for kind, size in sizes.values():
                if raw in (kind, "all") and size is not None:
                    out |= {(kind, i) for i in range(size)}
            continue
        m = _BLOCK_ITEM.match(raw)
        if not m:
            raise RoutingError(f"routing block {raw!r} not understood: use e.g. 'double', "
                               "'single', 'all', 'd3', 'd2-5', 's0-9' (comma-separated)")
        kind, size = sizes[m.group(1)]
        lo, hi = int(m.group(2)), int(m.group(3) or m.group(2))
        if lo > hi:
            raise RoutingError(f"routing blocks {raw!r}: a range must go from low to high")
        if size is None:
            continue
        if hi >= size:
            raise RoutingError(f"routing blocks {raw!r}: this model has {size} {kind} blocks "
                               f"(indices 0-{size - 1})")
        out |= {(kind, i) for i in range(lo, hi + 1)}
    if not out and depth is not None:
        raise RoutingError("no routing blocks selected: dynamic routing needs at least one")
    return frozenset(out)
