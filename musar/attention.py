"""Routed attention without an L x L tensor, its dense reference, and dynamic-route scores.

``attn`` arguments are the model's own attention kernel (ComfyUI passes its active backend):
``attn(q, k, v) -> (B, Lq, heads * head_dim)`` for q, k, v shaped (B, heads, L*, head_dim).
Routed attention calls it once per query group of the plan over only the keys that group may
see (gathered), so the work is the sum of allowed query-key blocks and the largest temporary is
one group's scores inside the kernel, never L x L.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layout import TokenLayout
from .routing import Group, RoutePlan, allowed_mask, dynamic_groups, static_groups

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _take(t: torch.Tensor, idx) -> torch.Tensor:
    if idx is None:
        return t
    if isinstance(idx, slice):
        return t[:, :, idx]
    return t.index_select(2, idx.to(t.device))


def _run_groups(q, k, v, groups: list[Group], attn: AttnFn, out: torch.Tensor) -> None:
    for g in groups:
        res = attn(_take(q, g.q), _take(k, g.k), _take(v, g.k))
        if isinstance(g.q, slice):
            out[:, g.q] = res
        else:
            out[:, g.q.to(out.device)] = res


def routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout,
                     plan: RoutePlan, attn: AttnFn) -> torch.Tensor:
    """Attention of the joint sequence under ``plan``; equals masked dense attention."""
    b, heads, length, dim = q.shape
    if plan.is_dense or layout.n_subjects == 0:
        return attn(q, k, v)
    out = q.new_empty(b, length, heads * dim)
    if plan.route is None:
        _run_groups(q, k, v, static_groups(layout, plan.static, q.device), attn, out)
        return out
    for rows, route in _same_route_batches(plan.route):
        sub = out[rows] if isinstance(rows, slice) else out.new_empty(len(rows), length, heads * dim)
        groups = dynamic_groups(layout, plan, route.to(q.device), q.device)
        _run_groups(_rows(q, rows), _rows(k, rows), _rows(v, rows), groups, attn, sub)
        if not isinstance(rows, slice):
            out[rows] = sub
    return out


def routed_attention_cached(q: torch.Tensor, k_full: torch.Tensor, v_full: torch.Tensor,
                            layout: TokenLayout, plan: RoutePlan, attn: AttnFn) -> torch.Tensor:
    """Condition-cache step: only P and canvas tokens run (``q`` is (B, h, P+canvas, d)) while
    ``k_full`` / ``v_full`` hold the whole joint sequence, conditions taken from the cache."""
    b, heads, length, dim = q.shape
    shift = sum(layout.caption_lens)
    out = q.new_empty(b, length, heads * dim)

    def local(g: Group) -> Group:
        if g.kind == "prompt":
            return Group(g.q, g.k, g.kind)
        qs = slice(g.q.start - shift, g.q.stop - shift) if isinstance(g.q, slice) else g.q - shift
        return Group(qs, g.k, g.kind)

    def run(rows, groups):
        qq = q if rows is None else q[rows]
        kk, vv = (k_full, v_full) if rows is None else (k_full[rows], v_full[rows])
        sub = out if rows is None else out.new_empty(qq.shape[0], length, heads * dim)
        for g in groups:
            g = local(g)
            res = attn(qq[:, :, g.q] if isinstance(g.q, slice) else qq.index_select(2, g.q),
                       _take(kk, g.k), _take(vv, g.k))
            sub[:, g.q] = res
        if rows is not None:
            out[rows] = sub

    if plan.route is None:
        run(None, [g for g in static_groups(layout, plan.static, q.device) if g.kind != "condition"])
        return out
    for rows, route in _same_route_batches(plan.route):
        groups = dynamic_groups(layout, plan, route.to(q.device), q.device)
        run(rows, [g for g in groups if g.kind != "condition"])
    return out


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


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout,
                    plan: RoutePlan) -> torch.Tensor:
    """Slow reference: full boolean mask and an explicit softmax (tests and the naive bench)."""
    mask = allowed_mask(layout, plan, q.shape[0]).to(q.device)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v.float()
    return o.to(q.dtype).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def subject_attention_mass(q_x: torch.Tensor, k: torch.Tensor, layout: TokenLayout,
                           budget: int = 1 << 24) -> torch.Tensor:
    """Route scores: for every X query (``q_x`` is (B, heads, x_len, dim)), the head-averaged
    softmax mass on each subject's image keys, with the softmax over every key of the joint
    sequence ``k`` (the static view, so a route can change between steps). Returns
    (B, x_len, N) float32. Chunked over queries: at most ``budget`` scores live at once."""
    b, heads, n_x, dim = q_x.shape
    kf = k.float().transpose(-1, -2)
    chunk = max(1, budget // max(1, b * heads * k.shape[2]))
    out = torch.empty(b, n_x, layout.n_subjects, dtype=torch.float32, device=q_x.device)
    for start in range(0, n_x, chunk):
        stop = min(start + chunk, n_x)
        s = (q_x[:, :, start:stop].float() @ kf) * dim ** -0.5
        lse_all = torch.logsumexp(s, dim=-1)
        for i in range(layout.n_subjects):
            lse_i = torch.logsumexp(s[..., layout.image(i)], dim=-1)
            out[:, start:stop, i] = (lse_i - lse_all).exp().mean(dim=1)
    return out
