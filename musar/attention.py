"""Routed attention without an L x L tensor, its dense reference and dynamic-route scores (one
FLUX block's attention under MUSAR, which uses them, is ``block.block_attention``).

``attn`` arguments are the model's own attention kernel (ComfyUI passes its active backend):
``attn(q, k, v) -> (B, Lq, heads * head_dim)`` for q, k, v shaped (B, heads, L*, head_dim).
Routed attention runs each query group of the plan over only the keys that group may see, so
the work is the sum of allowed query-key blocks and nothing L x L is ever built. Two executors,
chosen per call:

* **log-sum-exp**, when ``attn`` declares an ``lse`` twin (``attention_lse.SdpaLse``: the same
  SDPA kernel, also returning its log-sum-exp) that runs on the tensors' device: one kernel call
  per contiguous key run, on views, merged by the log-sum-exp (``attention_lse``). No key is
  copied; query pieces go in chunks so that the temporaries stay under 3/4 of the output. ``sdpa``
  below declares it, and the ComfyUI patcher does for ComfyUI's PyTorch kernel.
* **gather**, for every other kernel (sub-quadratic, xformers, sage ...), which returns only its
  output: one call per group over the group's keys copied into one buffer (``_Keys``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .attention_lse import SDPA_LSE, Weighted, lse_twin, needs_grad, segment_attention
from .errors import RoutingError
from .layout import TokenLayout
from .routes import Group, RoutePlan, allowed_mask, dynamic_groups, key_bias, runs, static_groups

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _take(t: torch.Tensor, idx) -> torch.Tensor:
    if idx is None:
        return t
    if isinstance(idx, slice):
        return t[:, :, idx]
    return t[:, :, idx.to(t.device)]  # advanced indexing: several times faster than index_select


def _merged(parts: tuple[slice, ...]) -> slice | None:
    """The segments as one slice when they are adjacent (in any order), else None."""
    joined = runs(parts)
    return joined[0] if len(joined) == 1 else None


# ---- log-sum-exp executor ----------------------------------------------------------------------
def _key_segments(g: Group, k, v, chunk: int) -> tuple[list, int]:
    """The group's keys as (k, v) views of contiguous runs (weighted segments split off and
    wrapped in ``Weighted``), and the rows its gathers hold: an arbitrary index set (symmetric
    routing's routed canvas keys) is gathered ``chunk`` keys at a time, each chunk a segment of
    its own (gathered when its kernel call runs)."""
    if g.k_weights:
        return [_weighted_view(k, v, piece, w) for piece, w in _weighted_runs(g, k.shape[2])], 0
    if g.k is None:
        return [(k, v)], 0
    if isinstance(g.k, slice):
        return [(k[:, :, g.k], v[:, :, g.k])], 0
    if g.k_parts:
        return [(k[:, :, p], v[:, :, p]) for p in runs(g.k_parts)], 0
    idx = g.k.to(k.device)
    return [functools.partial(_gather, k, v, i) for i in idx.split(chunk)], 2 * min(chunk, len(idx))


def _weighted_runs(g: Group, length: int) -> list[tuple[slice, float]]:
    """The group's key runs cut at its weighted segments: (piece, weight) in sequence order."""
    if g.k is None:
        spans = [slice(0, length)]
    elif isinstance(g.k, slice):
        spans = [g.k]
    elif g.k_parts:
        spans = runs(g.k_parts)
    else:
        raise ValueError("weighted key segments need segment keys, not an index set")
    cuts = sorted({c for s, _ in g.k_weights for c in (s.start, s.stop)})
    out = []
    for span in spans:
        edges = [span.start, *(c for c in cuts if span.start < c < span.stop), span.stop]
        for a, b in zip(edges, edges[1:]):
            w = next((w for s, w in g.k_weights if s.start <= a and b <= s.stop), 1.0)
            out.append((slice(a, b), w))
    return out


def _weighted_view(k, v, piece: slice, weight: float):
    pair = (k[:, :, piece], v[:, :, piece])
    return pair if weight == 1.0 else Weighted(pair, weight)


def _gather(k, v, idx):
    return _take(k, idx), _take(v, idx)


def _run_groups_lse(q, k, v, groups: list[Group], kernel, out: torch.Tensor) -> None:
    """Every group's query pieces in chunks whose temporaries (gathered queries and keys, result,
    second partial) hold at most 3/4 of the output's rows: with the output that stays under the
    dense call's two L-row tensors whatever the route."""
    b, length = out.shape[:2]
    out4 = out.view(b, length, q.shape[1], q.shape[3])
    budget, grad = max(length * 3 // 4, 8), needs_grad(q, k, v)
    for g in groups:
        keys, held = _key_segments(g, k, v, budget // 8)
        for rows in _query_pieces(g):
            rows = _as_slice(rows)
            temporaries = (1 if isinstance(rows, slice) else 2) + (len(keys) > 1)
            for part in _chunks(rows, max(1, (budget - held) // temporaries)):
                res = segment_attention(_take(q, part), keys, kernel, grad)
                out4[:, part if isinstance(part, slice) else part.to(out.device)] = res.transpose(1, 2)
                del res


def _as_slice(rows):
    """An index tensor of consecutive positions as a slice (a view instead of a gather)."""
    if isinstance(rows, slice) or rows.numel() == 0:
        return rows
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == rows.numel() and bool((rows[1:] > rows[:-1]).all()):
        return slice(first, last + 1)
    return rows


def _chunks(rows, size: int):
    if isinstance(rows, slice):
        return [slice(i, min(i + size, rows.stop)) for i in range(rows.start, rows.stop, size)]
    return list(rows.split(size))


class _Keys:
    """Key/value views for each group. Groups whose keys are the canvas plus a few segments
    (every static group, every routed canvas group) read one buffer: the canvas is copied to its
    front once per call and each group's other segments behind it, so the canvas is never
    re-gathered per group and segments already in place (shared with the previous group) are
    not copied again. With autograd on, every group gets fresh concatenated keys instead (the
    buffer is overwritten between groups)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, canvas: slice, groups: list[Group]):
        self.k, self.v, self.canvas = k, v, canvas
        self.reuse = not (torch.is_grad_enabled() and (k.requires_grad or v.requires_grad))
        rests = [self.rest(g) for g in groups]
        self.slot = max((sum(p.stop - p.start for p in r) for r in rests if r), default=0)
        self.buf: tuple[torch.Tensor, torch.Tensor] | None = None
        self.held: tuple[slice, ...] = ()

    def rest(self, g: Group) -> tuple[slice, ...] | None:
        """The group's key segments other than the canvas (latest first: a subject's condition
        before the prompt, so groups sharing the condition share the buffer), or None when the
        keys are all keys, one slice, or not canvas + segments."""
        if g.k is None or isinstance(g.k, slice) or self.canvas not in g.k_parts:
            return None
        if _merged(g.k_parts) is not None:
            return None
        return tuple(sorted((p for p in g.k_parts if p != self.canvas), key=lambda p: -p.start))

    def order(self, g: Group):
        """Execution order: groups without the buffer first, then buffer groups so that groups
        sharing leading segments run back to back."""
        r = self.rest(g)
        return (0, ()) if r is None else (1, tuple(-p.start for p in r))

    def get(self, g: Group) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.k, self.v
        if g.k is None:
            return k, v
        whole = g.k if isinstance(g.k, slice) else _merged(g.k_parts) if g.k_parts else None
        if whole is not None:
            return k[:, :, whole], v[:, :, whole]
        rest = self.rest(g)
        if rest is None:
            return _take(k, g.k), _take(v, g.k)
        if not self.reuse:
            parts = (self.canvas, *rest)
            return (torch.cat([k[:, :, p] for p in parts], 2), torch.cat([v[:, :, p] for p in parts], 2))
        return self._fill(rest)

    def _fill(self, rest: tuple[slice, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.canvas.stop - self.canvas.start
        if self.buf is None:
            b, h, _, d = self.k.shape
            self.buf = tuple(t.new_empty(b, h, c + self.slot, d) for t in (self.k, self.v))
            for buf, src in zip(self.buf, (self.k, self.v)):
                buf[:, :, :c] = src[:, :, self.canvas]
        same = 0
        while same < min(len(rest), len(self.held)) and rest[same] == self.held[same]:
            same += 1
        at = c + sum(p.stop - p.start for p in rest[:same])
        for p in rest[same:]:
            n = p.stop - p.start
            for buf, src in zip(self.buf, (self.k, self.v)):
                buf[:, :, at:at + n] = src[:, :, p]
            at += n
        self.held = rest
        end = c + sum(p.stop - p.start for p in rest)
        return self.buf[0][:, :, :end], self.buf[1][:, :, :end]


def _query_pieces(g: Group):
    """The group's queries as slices (no gather) when it has segments, else its index tensor."""
    return g.q_parts if g.q_parts else (g.q,)


def _run_groups(q, k, v, groups: list[Group], attn: AttnFn, out: torch.Tensor,
                canvas: slice) -> None:
    lse = lse_twin(attn, q, k, v)
    if lse is not None:
        return _run_groups_lse(q, k, v, groups, lse, out)
    weighted = [g for g in groups if g.k_weights]
    if weighted:  # a weighted softmax needs the log-sum-exp: PyTorch's SDPA runs those groups
        if not SDPA_LSE.supports(q, needs_grad(q, k, v)):
            raise RoutingError(f"a reference strength below 1 needs PyTorch's SDPA with its "
                               f"log-sum-exp, which does not run for {q.device} {q.dtype}: set "
                               "every MUSAR Reference Label strength to 1")
        _run_groups_lse(q, k, v, weighted, SDPA_LSE, out)
        groups = [g for g in groups if not g.k_weights]
    keys = _Keys(k, v, canvas, groups)
    for g in sorted(groups, key=keys.order):
        kk, vv = keys.get(g)
        for rows in _query_pieces(g):
            res = attn(_take(q, rows), kk, vv)
            if isinstance(rows, slice):
                out[:, rows] = res
            else:
                out[:, rows.to(out.device)] = res
            del res  # before the next group's kernel allocates its own


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout,
                     plan: RoutePlan, attn: AttnFn, rows: tuple[slice, ...] | None = None
                     ) -> torch.Tensor:
    """Attention of the joint sequence under ``plan``; equals masked dense attention. ``k`` and
    ``v`` hold every token of ``layout``; ``q`` holds the tokens of ``rows`` (layout segments, in
    order; default every token): a condition-cache step runs the prompt and canvas only, and
    ComfyUI's reference K/V cache (FluxKVCache) runs every token but the references."""
    b, heads, length, dim = q.shape
    if plan.is_dense or layout.n_routed == 0:
        return attn(q, k, v)
    local = QueryRows(layout, rows, q.device) if rows is not None else None
    if local is not None and local.count != length:
        raise ValueError(f"q holds {length} tokens but the rows {rows} hold {local.count}")
    out = q.new_empty(b, length, heads * dim)
    if plan.route is None:
        groups = static_groups(layout, plan, q.device)
        _run_groups(q, k, v, local.groups(groups) if local else groups, attn, out, layout.canvas)
        return out
    for batch_rows, route in _same_route_batches(plan.route):
        whole = isinstance(batch_rows, slice)
        sub = out[batch_rows] if whole else out.new_empty(len(batch_rows), length, heads * dim)
        groups = dynamic_groups(layout, plan, route.to(q.device), q.device)
        _run_groups(_rows(q, batch_rows), _rows(k, batch_rows), _rows(v, batch_rows),
                    local.groups(groups) if local else groups, attn, sub, layout.canvas)
        if not whole:
            out[batch_rows] = sub
    return out


class QueryRows:
    """Where the layout tokens of ``rows`` (segments, in order) sit in a query tensor that holds
    only them: query groups and row sets re-indexed to it, groups with no query left dropped."""

    def __init__(self, layout: TokenLayout, rows: tuple[slice, ...], device=None):
        self.rows = tuple(r for r in rows if r.stop > r.start)
        self.count = sum(r.stop - r.start for r in self.rows)
        self._lookup = torch.full((layout.total,), -1, dtype=torch.long)
        at = 0
        for r in self.rows:
            self._lookup[r] = torch.arange(at, at + r.stop - r.start)
            at += r.stop - r.start
        self.device = device

    def slices(self, parts) -> tuple[slice, ...]:
        """Layout segments -> the local slices of their tokens that the query tensor holds."""
        out, at = [], 0
        for r in self.rows:
            for p in parts:
                lo, hi = max(p.start, r.start), min(p.stop, r.stop)
                if hi > lo:
                    out.append(slice(at + lo - r.start, at + hi - r.start))
            at += r.stop - r.start
        return tuple(sorted(out, key=lambda s: s.start))

    def index(self, idx) -> torch.Tensor | slice:
        """Layout positions (slice or index tensor) -> local positions of those held."""
        if isinstance(idx, slice):
            joined = self.slices((idx,))
            return joined[0] if len(joined) == 1 else _index_of(joined, self.device)
        local = self._lookup[idx.cpu()]
        return _as_slice(local[local >= 0].to(self.device))

    def groups(self, groups: list[Group]) -> list[Group]:
        out = []
        for g in groups:
            parts = self.slices(g.q_parts) if g.q_parts else ()
            q = (parts[0] if len(parts) == 1 else _index_of(parts, self.device)) if g.q_parts \
                else self.index(g.q)
            if _count(q):
                out.append(Group(q, g.k, g.kind, parts, g.k_parts, g.k_weights))
        return out


def _index_of(parts, device) -> torch.Tensor:
    if not parts:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat([torch.arange(p.start, p.stop, device=device) for p in parts])


def _count(q) -> int:
    return q.stop - q.start if isinstance(q, slice) else q.numel()


def _rows(t: torch.Tensor, rows):
    return t[rows]


def _same_route_batches(route: torch.Tensor):
    """Batch elements sharing one route run together (CFG's cond and uncond usually do)."""
    todo = list(range(route.shape[0]))
    while todo:
        first = todo[0]
        same = [i for i in todo if torch.equal(route[i], route[first])]
        todo = [i for i in todo if i not in same]
        rows = slice(same[0], same[-1] + 1) if same == list(range(same[0], same[-1] + 1)) else same
        yield rows, route[first]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Default kernel (PyTorch SDPA) in the ``attn`` convention, for use outside ComfyUI."""
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


sdpa.lse = SDPA_LSE  # the same fused kernel, also returning its log-sum-exp


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout,
                    plan: RoutePlan, rows: tuple[slice, ...] | None = None) -> torch.Tensor:
    """Slow reference: full boolean mask and an explicit softmax (tests and the naive bench);
    ``rows`` as in ``routed_attention``."""
    mask = allowed_mask(layout, plan, q.shape[0]).to(q.device)
    bias = key_bias(layout, plan, q.shape[0]).to(q.device) if plan.weights else None
    if rows is not None:
        keep = torch.cat([torch.arange(r.start, r.stop) for r in rows]).to(q.device)
        mask, bias = mask[:, keep], None if bias is None else bias[:, keep]
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias[:, None]
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v.float()
    return o.to(q.dtype).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def subject_attention_mass(q_x: torch.Tensor, k: torch.Tensor, layout: TokenLayout,
                           budget: int = 1 << 24) -> torch.Tensor:
    """Route scores: for every X query (``q_x`` is (B, heads, x_len, dim)), the head-averaged
    softmax mass on each routed condition's image keys (``layout.route_keys``), with the softmax over every key of the joint
    sequence ``k`` (the static view, so a route can change between steps). Returns
    (B, x_len, n_routed) float32. Computed as attention whose values are one-hot subject indicators
    (softmax @ indicator = mass per subject), i.e. one fused SDPA call: no score matrix is
    materialised; queries go in chunks whose output holds at most ``budget`` numbers."""
    b, heads, n_x, dim = q_x.shape
    n = layout.n_routed
    width = max(dim, n)  # equal q/k/v widths keep SDPA on its fused kernels
    ind = torch.zeros(1, 1, k.shape[2], width, dtype=torch.float32, device=k.device)
    for i in range(n):
        ind[0, 0, layout.route_keys(i), i] = 1.0
    ind = ind.expand(b, heads, -1, -1)
    qf, kf = q_x.float(), k.float()
    rows = max(1, budget // max(1, b * heads * width))
    out = torch.empty(b, n_x, n, dtype=torch.float32, device=q_x.device)
    for start in range(0, n_x, rows):
        stop = min(start + rows, n_x)
        mass = torch.nn.functional.scaled_dot_product_attention(qf[:, :, start:stop], kf, ind)
        out[:, start:stop] = mass[..., :n].mean(dim=1)
    return out
