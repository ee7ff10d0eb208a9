"""The log-sum-exp executor of routed attention (musar/attention_lse.py): per-segment kernel calls
on key views merged by their log-sum-exp equal the dense masked reference, forward and backward;
kernels without a log-sum-exp twin run the gather executor; which one runs is the kernel's
explicit declaration (``attn.lse``), never a guess."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_routes as tr  # noqa: E402
import tiny  # noqa: E402

from musar import attention, attention_lse, routes  # noqa: E402
from musar.flux_forward import ForwardInputs, musar_forward  # noqa: E402
from musar.layout import TokenLayout, grid_ids  # noqa: E402


class Recording:
    """An LSE twin that delegates to PyTorch's and counts what runs."""

    def __init__(self, device_ok=True):
        self.device_ok, self.forward_rows, self.backward_calls = device_ok, [], 0

    def supports(self, q, grad=False):
        return self.device_ok and attention.SDPA_LSE.supports(q, grad)

    def forward(self, q, k, v):
        self.forward_rows.append(q.shape[2])
        return attention.SDPA_LSE.forward(q, k, v)

    def backward(self, *args):
        self.backward_calls += 1
        return attention.SDPA_LSE.backward(*args)


def kernel_with(twin):
    """An ``attn`` kernel (SDPA) declaring ``twin`` as its log-sum-exp version, and a list of the
    key lengths the plain kernel itself was called with (the gather executor's calls)."""
    calls = []

    def attn(q, k, v):
        calls.append(k.shape[2])
        return attention.sdpa(q, k, v)

    attn.lse = twin
    return attn, calls


CASES = [(n, kind) for n in range(1, 7) for kind in tr.PLANS if kind != "dense"]


@pytest.mark.parametrize("n,kind", CASES)
def test_lse_executor_matches_dense_reference(n, kind):
    layout = tr._layout(n, extra=3 if n % 2 else 0, seed=n)
    q, k, v = tr._qkv(layout, seed=n)
    plan = tr._plan(kind, layout, 2, seed=n)
    twin = Recording()
    attn, plain = kernel_with(twin)
    got = attention.routed_attention(q, k, v, layout, plan, attn)
    torch.testing.assert_close(got, attention.dense_reference(q, k, v, layout, plan),
                               rtol=1e-5, atol=1e-5)
    assert twin.forward_rows and not plain  # every group ran through the log-sum-exp twin


@pytest.mark.parametrize("n,kind", CASES)
def test_gather_executor_matches_dense_reference(n, kind):
    layout = tr._layout(n, extra=3 if n % 2 else 0, seed=n)
    q, k, v = tr._qkv(layout, seed=n)
    plan = tr._plan(kind, layout, 2, seed=n)
    attn, plain = kernel_with(None)
    got = attention.routed_attention(q, k, v, layout, plan, attn)
    torch.testing.assert_close(got, attention.dense_reference(q, k, v, layout, plan),
                               rtol=1e-5, atol=1e-5)
    assert plain


def test_a_twin_that_cannot_run_on_the_device_falls_back_to_gathering():
    layout = tr._layout(3)
    q, k, v = tr._qkv(layout)
    plan = routes.RoutePlan()
    twin = Recording(device_ok=False)
    attn, plain = kernel_with(twin)
    got = attention.routed_attention(q, k, v, layout, plan, attn)
    torch.testing.assert_close(got, attention.dense_reference(q, k, v, layout, plan),
                               rtol=1e-5, atol=1e-5)
    assert plain and not twin.forward_rows


def test_the_default_sdpa_kernel_declares_the_lse_twin_on_cpu():
    q = torch.zeros(1, 1, 4, 8)
    assert attention_lse.lse_twin(attention.sdpa, q, q, q) is attention.SDPA_LSE
    assert attention_lse.lse_twin(lambda *a: None, q, q, q) is None


@pytest.mark.parametrize("kind", ["static", "dynamic", "dynamic-nostatic", "symmetric"])
def test_lse_executor_gradients_match_dense_reference(kind):
    layout = tr._layout(4, extra=3, seed=2)
    q, k, v = (t.requires_grad_() for t in tr._qkv(layout, seed=2))
    plan = tr._plan(kind, layout, 2, seed=2)
    weight = torch.randn(2, layout.total, q.shape[1] * q.shape[3], generator=torch.Generator().manual_seed(5))
    twin = Recording()
    attn, plain = kernel_with(twin)
    got = torch.autograd.grad((attention.routed_attention(q, k, v, layout, plan, attn) * weight).sum(),
                              (q, k, v))
    want = torch.autograd.grad((attention.dense_reference(q, k, v, layout, plan) * weight).sum(),
                               (q, k, v))
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"d{name}")
    assert twin.backward_calls and not plain


def test_training_forward_gradients_equal_with_either_executor():
    """musar_forward (the training forward) under autograd: the same loss gradients for every
    parameter whether attention merges log-sum-exps or gathers keys."""
    dm = tiny.TinyFlux()
    g = torch.Generator().manual_seed(0)
    inp = ForwardInputs(torch.randn(1, 8, 64, generator=g), grid_ids(2, 4)[None],
                        torch.randn(1, 5, 16, generator=g), [torch.randn(1, 3, 16, generator=g)],
                        torch.randn(1, 4, 64, generator=g), grid_ids(2, 2, col0=-2),
                        torch.tensor([0.3]), torch.randn(1, 8, generator=g), torch.tensor([1.0]))
    layout = TokenLayout(5, 8, (3,), (4,))
    twin = Recording()
    grads = []
    for attn in (kernel_with(twin)[0], kernel_with(None)[0]):
        dm.zero_grad()
        musar_forward(dm, inp, layout, attn=attn).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in dm.named_parameters() if p.grad is not None})
    assert twin.backward_calls and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_large_query_groups_run_in_chunks_that_still_match():
    """Query pieces larger than the executor's temporary budget (3/4 of the output rows over
    the number of temporaries) are split; the result is unchanged."""
    layout = TokenLayout(prompt_len=4, x_len=64, caption_lens=(2,), image_lens=(6,), extra_len=2)
    q, k, v = tr._qkv(layout, batch=1)
    route = torch.zeros(1, 64, dtype=torch.long)
    route[0, 1::7] = routes.BACKGROUND  # subject 0's canvas tokens: 55 scattered positions
    for plan in (routes.RoutePlan(), routes.RoutePlan(route=route)):
        twin = Recording()
        got = attention.routed_attention(q, k, v, layout, plan, kernel_with(twin)[0])
        torch.testing.assert_close(got, attention.dense_reference(q, k, v, layout, plan),
                                   rtol=1e-5, atol=1e-5)
        budget = layout.total * 3 // 4
        assert max(twin.forward_rows) <= budget < layout.canvas_len


def test_bfloat16_lse_executor_matches_dense_reference():
    layout = tr._layout(3, extra=2)
    q, k, v = (t.bfloat16() for t in tr._qkv(layout))
    plan = tr._plan("dynamic", layout, 2, seed=1)
    got = attention.routed_attention(q, k, v, layout, plan, attention.sdpa)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), attention.dense_reference(q, k, v, layout, plan).float(),
                               rtol=2e-2, atol=2e-2)


def test_merge_of_key_segments_equals_one_call_over_their_union():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g, dtype=torch.float64) for _ in range(3))
    keys = [(k[:, :, a:b], v[:, :, a:b]) for a, b in ((0, 7), (7, 31), (31, 40))]
    out, lse = attention_lse.merge(q, keys, attention.SDPA_LSE.forward)
    want, want_lse = attention.SDPA_LSE.forward(q, k, v)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(lse, want_lse)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on CI)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_lse_executor_matches_dense_reference(dtype):
    layout = tr._layout(4, extra=2)
    q, k, v = (t.to("cuda", dtype) for t in tr._qkv(layout, heads=2, dim=64))
    plan = tr._plan("dynamic", layout, 2, seed=1)
    assert attention_lse.lse_twin(attention.sdpa, q, k, v) is attention.SDPA_LSE
    got = attention.routed_attention(q, k, v, layout, plan, attention.sdpa).float().cpu()
    want = attention.dense_reference(q.float(), k.float(), v.float(), layout, plan).cpu()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("executor", ["lse", "gather"])
@pytest.mark.parametrize("kind", ["static", "dynamic", "symmetric"])
def test_condition_cache_step_matches_the_full_step_with_either_executor(executor, kind):
    layout = tr._layout(3, extra=2)
    q, k, v = tr._qkv(layout)
    plan = tr._plan(kind, layout, 2, seed=3)
    twin = Recording()
    attn, plain = kernel_with(twin if executor == "lse" else None)
    full = attention.routed_attention(q, k, v, layout, plan, attention.sdpa)
    keep = torch.cat([torch.arange(layout.prompt_len),
                      torch.arange(layout.canvas.start, layout.canvas.stop)])
    short = attention.routed_attention(q[:, :, keep], k, v, layout, plan, attn, rows=(layout.prompt, layout.canvas))
    torch.testing.assert_close(short, full[:, keep], rtol=1e-5, atol=1e-5)
    assert bool(twin.forward_rows) == (executor == "lse") and bool(plain) == (executor == "gather")
