"""One FLUX block's joint attention under MUSAR (``block_attention``): the condition cache,
route scores in the routing blocks, routed attention (``attention.routed_attention``) and the
strength blend, for the queries a block actually holds (``query_rows``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import attention
from .attention import QueryRows, subject_attention_mass
from .errors import RoutingError
from .layout import TokenLayout


def query_rows(call, q_len: int, k_len: int) -> tuple[slice, ...] | None:
    """The layout segments a block's queries hold (None: every token), from the call and the
    lengths ComfyUI hands the attention: a condition-cache step runs the prompt and canvas
    only; ComfyUI's own reference K/V cache (FluxKVCache) drops the routed references' queries
    and appends their cached keys. Anything else is refused with the lengths it found."""
    lay = call.layout
    if call.cached:
        rows = (lay.prompt, lay.canvas)
        if q_len == lay.prompt_len + lay.canvas_len:
            return rows
    elif q_len == lay.total and k_len == lay.total:
        return None
    elif lay.n_references and not lay.n_subjects and k_len == lay.total \
            and q_len == lay.total - sum(lay.reference_lens):
        return (slice(0, q_len),)
    raise RuntimeError(f"MUSAR: attention over {q_len} queries and {k_len} keys, but the routed "
                       f"layout has {lay.total} tokens (another patch changed the sequence)")


def block_attention(call, block: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask,
                    kernel: Callable) -> torch.Tensor:
    """One FLUX block's joint attention under MUSAR: condition-cache bookkeeping, route scores
    in routing blocks, routed attention, and the strength blend of the canvas output. ``call``
    is the ``session.MusarCall`` of this model call, ``block`` ("double" | "single", index);
    ``kernel(q, k, v, mask=None)`` is the model's attention function."""
    if mask is not None and bool((mask != 0).any()):  # Qwen-Image passes its (zero) text mask
        raise RoutingError("MUSAR: an attention mask that hides tokens reached routed attention "
                           "(a padded text encoding, or a patch that adds a mask); routing cannot "
                           "combine with it: encode each prompt on its own")
    lay = call.layout
    if call.cached:
        k, v = call.cache.extend(block, k, v, lay)
    elif call.cache is not None:
        call.cache.store(block, k, v, lay)
    rows = query_rows(call, q.shape[2], k.shape[2])
    local = QueryRows(lay, rows, q.device) if rows is not None else None
    if call.collect and block in call.schedule.blocks:
        call.add_scores(subject_attention_mass(q[:, :, local.index(lay.x) if local else lay.x], k, lay))
    out = attention.routed_attention(q, k, v, lay, call.plan, kernel, rows)
    if call.settings.strength != 1.0:
        _blend(out, q, k, v, lay, local, call.settings.strength, kernel)
    return out


def _blend(out, q, k, v, lay: TokenLayout, local: QueryRows | None, strength: float, kernel) -> None:
    """``strength`` < 1 mixes routed attention with the attention the unpatched model computes
    (keys: every token but MUSAR subjects' condition tokens): for the canvas rows (the canvas
    without the subjects), and, when references are routed, also for the prompt and reference
    rows (their stock, unrouted view), so strength 0 is the unpatched model."""
    P, C = lay.prompt_len, lay.canvas_len
    keys = torch.cat([torch.arange(P), torch.arange(lay.txt_len, lay.txt_len + C
                                                    + sum(lay.reference_lens))]).to(q.device)
    rows = keys if lay.n_references else lay.canvas
    if local is not None:
        rows = local.index(rows)
    base = kernel(q[:, :, rows], k.index_select(2, keys), v.index_select(2, keys))
    out[:, rows] = base + strength * (out[:, rows] - base)
