"""The tier-1 stand-ins of tests/core/tiny.py do what the trainer tests rely on."""

import torch
from tiny import TinyFlux, tiny_encoders

from musar import attention, flux_forward
from musar.flux_forward import ForwardInputs, musar_forward
from musar.layout import TokenLayout, grid_ids


def test_tiny_flux_runs_the_musar_forward(monkeypatch):
    """TinyFlux is a valid duck type of musar_forward: it runs, and its routed attention equals
    the dense masked reference inside the forward."""
    dm = TinyFlux()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 64, generator=g)
    inp = ForwardInputs(x, grid_ids(2, 4)[None], torch.randn(1, 5, 16, generator=g),
                        [torch.randn(1, 3, 16, generator=g)], torch.randn(1, 4, 64, generator=g),
                        grid_ids(2, 2, col0=-2), torch.tensor([0.3]), torch.randn(1, 8, generator=g),
                        torch.tensor([1.0]))
    out = musar_forward(dm, inp, TokenLayout(5, 8, (3,), (4,)))
    assert out.shape == (1, 8, 64) and torch.isfinite(out).all()
    monkeypatch.setattr(flux_forward, "routed_attention",
                        lambda q, k, v, layout, plan, attn: attention.dense_reference(q, k, v, layout, plan))
    dense = musar_forward(dm, inp, TokenLayout(5, 8, (3,), (4,)))
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)


def test_tiny_encoders_are_deterministic():
    enc = tiny_encoders()
    pixels = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    assert enc.image(pixels).shape == (1, 16, 2, 4)
    assert torch.equal(enc.image(pixels), tiny_encoders().image(pixels))
    feats, pooled = enc.prompt("a red cube")
    assert feats.shape == (1, 12, 16) and pooled.shape == (1, 8)
    assert enc.caption("cube").shape == (1, 4, 16)
