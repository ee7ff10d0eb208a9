"""Attention over several key segments merged by their log-sum-exp: no key is copied.

For one block of queries and disjoint key segments S_1 .. S_m, softmax attention over their union
is the per-segment results o_i (each normalised over its own keys) weighted by
exp(lse_i - lse), where lse_i is segment i's log-sum-exp of the scaled scores and
lse = log(sum_i exp(lse_i)). So one fused-kernel call per segment, on views of K and V, gives the
exact result; the merge keeps two partial results alive at a time. Gradients: the kernel's own
backward, given the *merged* output and log-sum-exp, yields each segment's share of the
gradients (as ring attention does), so training runs the same way.

``SdpaLse`` is PyTorch's SDPA through the aten ops that also return the log-sum-exp (the ops
``torch.nn.functional.scaled_dot_product_attention`` itself dispatches to):
* CPU: ``_scaled_dot_product_flash_attention_for_cpu`` -> (out, logsumexp) and its backward;
* CUDA, inference only: ``_scaled_dot_product_flash_attention`` (half precision) or
  ``_scaled_dot_product_efficient_attention(..., compute_log_sumexp=True)`` (whose log-sum-exp
  is padded to a multiple of 32 queries). These are not exercised by the CPU test machines, so
  the first use per (device, dtype, head size) checks a merged result against one SDPA call and
  falls back to the gather executor, with a warning, when neither op matches.
"""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


def _cpu_forward(q, k, v):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)


def _cuda_flash(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    return out, lse


def _cuda_efficient(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse[..., :q.shape[2]]


class SdpaLse:
    """``forward(q, k, v) -> (out (B, h, Lq, d), lse (B, h, Lq) float32)`` and
    ``backward(dout, q, k, v, out, lse) -> (dq, dk, dv)``; ``supports(q, grad)`` says whether
    they run for q's device (and with autograd when ``grad``)."""

    def __init__(self):
        self._cuda: dict[tuple, object] = {}

    def supports(self, q: torch.Tensor, grad: bool = False) -> bool:
        if q.device.type == "cpu":
            return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
        return q.device.type == "cuda" and not grad and self._cuda_op(q) is not None

    def forward(self, q, k, v):
        return _cpu_forward(q, k, v) if q.device.type == "cpu" else self._cuda_op(q)(q, k, v)

    def backward(self, dout, q, k, v, out, lse):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, False)

    def _cuda_op(self, q):
        key = (q.device, q.dtype, q.shape[-1])
        if key not in self._cuda:
            half = q.dtype in (torch.float16, torch.bfloat16)
            self._cuda[key] = _first_exact(q, [_cuda_flash, _cuda_efficient] if half else [_cuda_efficient])
        return self._cuda[key]


def _first_exact(q, candidates):
    """The first op whose merged result over two key segments matches one SDPA call on a small
    random probe with q's device, dtype and head size; None (and a warning) if none does."""
    g = torch.Generator(device=q.device).manual_seed(0)
    qq, k, v = (torch.randn(1, 2, 80, q.shape[-1], generator=g, device=q.device).to(q.dtype)
                for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(qq, k, v).float()
    tol = 2e-2 if q.element_size() < 4 else 1e-4
    for op in candidates:
        try:
            got = merge(qq, [(k[:, :, :30], v[:, :, :30]), (k[:, :, 30:], v[:, :, 30:])], op)[0]
        except RuntimeError as e:
            logger.debug("MUSAR: %s unavailable: %s", op.__name__, e)
            continue
        if torch.allclose(got.float(), want, atol=tol, rtol=tol):
            return op
    logger.warning("MUSAR: no log-sum-exp SDPA kernel for %s %s head size %d; routed attention "
                   "gathers keys instead (more memory, same result)", q.device, q.dtype, q.shape[-1])
    return None


SDPA_LSE = SdpaLse()


def lse_twin(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The log-sum-exp kernel that ``attn`` declares (its attribute ``lse``: the same attention
    plus the log-sum-exp) when it runs for these tensors, else None."""
    twin = getattr(attn, "lse", None)
    return twin if twin is not None and twin.supports(q, needs_grad(q, k, v)) else None


class Weighted:
    """A key segment whose softmax mass is multiplied by ``weight`` (its log-sum-exp raised by
    log(weight)): the segment's keys count ``weight`` times as much against the others, exactly;
    weight 0 drops the segment."""

    __slots__ = ("segment", "log_weight")

    def __init__(self, segment, weight: float):
        self.segment = segment
        self.log_weight = math.log(weight) if weight > 0 else -math.inf


def _kv(segment):
    if isinstance(segment, Weighted):
        segment = segment.segment
    return segment() if callable(segment) else segment


def _log_weight(segment) -> float:
    return segment.log_weight if isinstance(segment, Weighted) else 0.0


def merge(q, keys, forward):
    """Attention of q over the union of the key segments ((k, v) pairs, callables returning one
    when the call needs it, or either wrapped in ``Weighted``), one ``forward`` call each,
    merged in place by the log-sum-exp. Returns (out, lse)."""
    keys = [s for s in keys if _log_weight(s) > -math.inf]
    out, lse = forward(q, *_kv(keys[0]))
    if _log_weight(keys[0]):
        lse = lse + _log_weight(keys[0])
    for segment in keys[1:]:
        part, part_lse = forward(q, *_kv(segment))
        if _log_weight(segment):
            part_lse = part_lse + _log_weight(segment)
        total = torch.logaddexp(lse, part_lse)
        out.mul_(torch.exp(lse - total).unsqueeze(-1))
        out.add_(part.mul_(torch.exp(part_lse - total).unsqueeze(-1)))
        lse = total
        del part
    return out, lse


class _SegmentAttention(torch.autograd.Function):
    """``merge`` with gradients: each segment's backward from the merged out and lse."""

    @staticmethod
    def forward(ctx, kernel, q, *kv):
        out, lse = merge(q, list(zip(kv[::2], kv[1::2])), kernel.forward)
        ctx.kernel = kernel
        ctx.save_for_backward(q, out, lse, *kv)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, out, lse, *kv = ctx.saved_tensors
        dq, grads = None, []
        for k, v in zip(kv[::2], kv[1::2]):
            gq, gk, gv = ctx.kernel.backward(dout, q, k, v, out, lse)
            dq = gq if dq is None else dq.add_(gq)
            grads += [gk, gv]
        return (None, dq, *grads)


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def segment_attention(q: torch.Tensor, keys: list, kernel, grad: bool) -> torch.Tensor:
    """(B, h, Lq, d) attention of q over the union of the key segments (see ``merge``), with
    autograd when ``grad`` (then gathered segments are gathered up front)."""
    if grad:
        if any(isinstance(s, Weighted) for s in keys):
            raise ValueError("weighted key segments are an inference feature (no gradients)")
        return _SegmentAttention.apply(kernel, q, *(t for segment in keys for t in _kv(segment)))
    return merge(q, keys, kernel.forward)[0]
