"""Which routed-attention executor runs inside real ComfyUI sampling: the log-sum-exp executor
when ComfyUI's active kernel is its PyTorch SDPA one (``--use-pytorch-cross-attention``, the
usual GPU default), the gather executor for any other kernel (here: ComfyUI's default CPU kernel,
sub-quadratic); both equal the dense masked reference."""

import comfy.ldm.flux.math
import comfy.ldm.modules.attention as comfy_attention
import pytest
import torch
from musar_helpers import make_subjects, pack_module, routed, sample, use_dense_reference


@pytest.fixture(scope="module")
def model(tiny_flux):
    return tiny_flux(seed=5)


def _count_lse_calls(pack, monkeypatch) -> list:
    lse = pack_module(pack, "musar.attention").SDPA_LSE
    calls, forward = [], lse.forward

    def counting(q, k, v):
        calls.append(q.shape[2])
        return forward(q, k, v)

    monkeypatch.setattr(lse, "forward", counting)
    return calls


@pytest.mark.parametrize("kernel,lse_expected", [("attention_pytorch", True), ("default", False)])
def test_the_active_comfy_kernel_picks_the_executor_and_both_equal_the_reference(
        pack, model, monkeypatch, kernel, lse_expected):
    if kernel != "default":  # what --use-pytorch-cross-attention makes FLUX call
        monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention",
                            getattr(comfy_attention, kernel))
    assert (comfy.ldm.flux.math.optimized_attention is comfy_attention.attention_pytorch) == lse_expected
    calls = _count_lse_calls(pack, monkeypatch)
    patched, _ = routed(pack, model, make_subjects(pack, ((8, 8), (8, 12), (4, 8)), (2, 3, 4)),
                        dynamic=True)
    fast = sample(patched, steps=3, cfg=2.0)
    assert bool(calls) == lse_expected
    use_dense_reference(pack, monkeypatch)
    torch.testing.assert_close(fast, sample(patched, steps=3, cfg=2.0), rtol=1e-4, atol=1e-4)


def test_an_attention_override_installed_before_musar_keeps_the_gather_executor(pack, model, monkeypatch):
    """Another pack's override wraps the kernel: MUSAR cannot know what it computes, so it calls
    it (gathering keys) instead of substituting PyTorch's SDPA."""
    monkeypatch.setattr(comfy.ldm.flux.math, "optimized_attention", comfy_attention.attention_pytorch)
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(func.__name__)
        return func(*args, **kwargs)

    base = model.clone()
    base.model_options["transformer_options"]["optimized_attention_override"] = previous
    calls = _count_lse_calls(pack, monkeypatch)
    patched, _ = routed(pack, base, make_subjects(pack))
    sample(patched, steps=2)
    assert seen and not calls
