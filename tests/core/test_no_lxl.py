"""Routed attention and the route scores never allocate an L x L tensor; the dense reference does.

A TorchDispatchMode sees every tensor an aten op returns. Each output whose storage is new (not
an alias of an op input) counts as an allocation of that storage's size; the largest one is
recorded. The sequence is long enough that L x L elements dwarf every legitimate tensor (the
output is L x heads*dim), so "largest allocation < L^2" separates a routed path from one that
materialises scores or a mask over all pairs - and the dense reference shows the detector fires.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from musar import attention, routes
from musar.layout import TokenLayout

# 3 subjects, X 24 x 24: L = 1394, L^2 = 1.9 M elements; the output is 1394 x 64 = 89 k.
LAYOUT = TokenLayout(prompt_len=32, x_len=576, caption_lens=(4, 6, 8), image_lens=(256,) * 3)
L = LAYOUT.total
HEADS, DIM = 2, 32


class LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr()
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                n = t.untyped_storage().nbytes() // t.element_size()
                if n > self.numel:
                    self.numel, self.op = n, func
        return out


def _qkv(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, HEADS, L, DIM, generator=g) for _ in range(3)]


def _route(batch, seed=0):
    """Subjects own vertical bands of the 24 x 24 canvas; a few tokens are background."""
    cols = torch.arange(24).repeat(24)
    route = (cols * LAYOUT.n_subjects // 24).expand(batch, -1).clone()
    route[:, ::17] = routes.BACKGROUND
    return route


PLANS = {
    "static": lambda b: routes.RoutePlan(static=True),
    "dynamic": lambda b: routes.RoutePlan(static=True, route=_route(b)),
    "dynamic-nostatic": lambda b: routes.RoutePlan(static=False, route=_route(b)),
    "symmetric": lambda b: routes.RoutePlan(static=True, route=_route(b), symmetric=True),
}


def _largest(fn) -> LargestAllocation:
    with LargestAllocation() as m:
        fn()
    return m


@pytest.mark.parametrize("kind", list(PLANS))
def test_routed_attention_never_allocates_an_lxl_tensor(kind):
    q, k, v = _qkv()
    plan = PLANS[kind](q.shape[0])
    m = _largest(lambda: attention.routed_attention(q, k, v, LAYOUT, plan, attention.sdpa))
    assert m.numel < L * L, f"{kind}: {m.op} allocated {m.numel} elements (L^2 = {L * L})"


def test_route_scores_never_allocate_an_lxl_tensor():
    q, k, _ = _qkv()
    m = _largest(lambda: attention.subject_attention_mass(q[:, :, LAYOUT.x], k, LAYOUT))
    assert m.numel < L * L, f"{m.op} allocated {m.numel} elements (L^2 = {L * L})"


def test_condition_cache_step_never_allocates_an_lxl_tensor():
    q, k, v = _qkv()
    keep = torch.cat([torch.arange(LAYOUT.prompt_len),
                      torch.arange(LAYOUT.canvas.start, LAYOUT.canvas.stop)])
    for kind in ("static", "dynamic"):
        plan = PLANS[kind](q.shape[0])
        m = _largest(lambda plan=plan: attention.routed_attention(q[:, :, keep], k, v, LAYOUT, plan, attention.sdpa, rows=(LAYOUT.prompt, LAYOUT.canvas)))
        assert m.numel < L * L, f"{kind}: {m.op} allocated {m.numel} elements"


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_the_detector_sees_the_dense_reference_build_lxl(kind):
    q, k, v = _qkv()
    plan = PLANS[kind](q.shape[0])
    m = _largest(lambda: attention.dense_reference(q, k, v, LAYOUT, plan))
    assert m.numel >= L * L


def test_routed_path_still_equals_the_reference_at_this_size():
    q, k, v = _qkv(batch=1, seed=3)
    for kind, make in PLANS.items():
        plan = make(1)
        torch.testing.assert_close(attention.routed_attention(q, k, v, LAYOUT, plan, attention.sdpa),
                                   attention.dense_reference(q, k, v, LAYOUT, plan),
                                   rtol=1e-5, atol=1e-5, msg=kind)


# ---- both executors, and peak memory against a dense call --------------------------------------
def _gathering(q, k, v):
    """SDPA without a log-sum-exp twin: routed attention runs the gather executor."""
    return attention.sdpa(q, k, v)


@pytest.mark.parametrize("kind", list(PLANS))
def test_gather_executor_never_allocates_an_lxl_tensor(kind):
    q, k, v = _qkv()
    plan = PLANS[kind](q.shape[0])
    m = _largest(lambda: attention.routed_attention(q, k, v, LAYOUT, plan, _gathering))
    assert m.numel < L * L, f"{kind}: {m.op} allocated {m.numel} elements (L^2 = {L * L})"


def _scattered_route(batch):
    """Subject 0 owns four fifths of the canvas, in no contiguous run; the rest is subject 1."""
    route = torch.zeros(batch, LAYOUT.x_len, dtype=torch.long)
    route[:, ::5] = 1
    return route


def _peak(fn) -> int:
    from bench import memtrack

    return memtrack.tensor_peak(fn).peak


@pytest.mark.parametrize("kind", [*PLANS, "scattered"])
def test_lse_executor_peak_memory_stays_below_a_dense_call(kind):
    """Bytes the call allocates (temporaries + output; q, k, v excluded): routed attention with
    the log-sum-exp executor never exceeds one dense SDPA call over all L tokens, whatever the
    route; the gathered K/V buffer of the fallback executor does (the measure can fail)."""
    q, k, v = _qkv()
    plan = (routes.RoutePlan(route=_scattered_route(q.shape[0])) if kind == "scattered"
            else PLANS[kind](q.shape[0]))
    dense = _peak(lambda: attention.sdpa(q, k, v))
    routed = _peak(lambda: attention.routed_attention(q, k, v, LAYOUT, plan, attention.sdpa))
    assert routed <= dense, f"{kind}: {routed / dense:.2f}x a dense call"
    if kind in ("static", "scattered"):
        gathered = _peak(lambda: attention.routed_attention(q, k, v, LAYOUT, plan, _gathering))
        assert gathered > dense
