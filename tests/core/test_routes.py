"""Routed attention equals the dense masked reference; the plan matches docs/METHOD.md's table."""

import itertools

import pytest
import torch

from musar import attention, routes
from musar.errors import RoutingError
from musar.layout import TokenLayout
from musar.regions import step_route


def _layout(n, extra=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = tuple(int(x) for x in torch.randint(1, 6, (n,), generator=g))
    imgs = tuple(int(x) for x in torch.randint(3, 12, (n,), generator=g))
    return TokenLayout(prompt_len=5, x_len=16, caption_lens=caps, image_lens=imgs, extra_len=extra)


def _qkv(layout, batch=2, heads=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.total, dim, generator=g) for _ in range(3)]


def _route(layout, batch, seed=0, background=True):
    g = torch.Generator().manual_seed(seed + 1)
    low = -1 if background else 0
    return torch.randint(low, layout.n_subjects, (batch, layout.x_len), generator=g)


PLANS = ["static", "dense", "dynamic", "dynamic-nostatic", "symmetric", "symmetric-nostatic"]


def _plan(kind, layout, batch, seed):
    route = _route(layout, batch, seed)
    return {
        "static": routes.RoutePlan(static=True),
        "dense": routes.RoutePlan(static=False),
        "dynamic": routes.RoutePlan(static=True, route=route),
        "dynamic-nostatic": routes.RoutePlan(static=False, route=route),
        "symmetric": routes.RoutePlan(static=True, route=route, symmetric=True),
        "symmetric-nostatic": routes.RoutePlan(static=False, route=route, symmetric=True),
    }[kind]


@pytest.mark.parametrize("n,kind,extra", [(n, k, e) for n, k, e in itertools.product(
    range(1, 7), PLANS, (0, 4)) if not (e and n not in (2, 6))])
def test_routed_attention_matches_dense_reference(n, kind, extra):
    layout = _layout(n, extra, seed=n)
    q, k, v = _qkv(layout, seed=n)
    plan = _plan(kind, layout, 2, seed=n)
    got = attention.routed_attention(q, k, v, layout, plan, attention.sdpa)
    want = attention.dense_reference(q, k, v, layout, plan)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cfg_batch_with_shared_route_runs_as_one_group():
    layout = _layout(3)
    q, k, v = _qkv(layout, batch=4)
    route = _route(layout, 1).expand(4, -1).clone()
    route[2] = _route(layout, 1, seed=7)[0]
    plan = routes.RoutePlan(route=route)
    calls = []

    def counting(q_, k_, v_):
        calls.append(q_.shape[0])
        return attention.sdpa(q_, k_, v_)

    got = attention.routed_attention(q, k, v, layout, plan, counting)
    torch.testing.assert_close(got, attention.dense_reference(q, k, v, layout, plan),
                               rtol=1e-5, atol=1e-5)
    assert 3 in calls and 1 in calls  # rows 0, 1, 3 share a route and run batched


def test_static_mask_is_the_papers_table():
    layout = TokenLayout(prompt_len=2, x_len=3, caption_lens=(1, 1), image_lens=(2, 2))
    m = routes.allowed_mask(layout, routes.RoutePlan(), 1)[0]
    P, X = layout.prompt, layout.x
    c0 = [layout.caption(0).start, *range(layout.image(0).start, layout.image(0).stop)]
    c1 = [layout.caption(1).start, *range(layout.image(1).start, layout.image(1).stop)]
    assert m[P, P].all() and m[P, X].all() and not m[P][:, c0 + c1].any()
    assert m[X].all()
    for own, other in ((c0, c1), (c1, c0)):
        assert m[own][:, own].all() and m[own][:, X].all()
        assert not m[own][:, other].any() and not m[own][:, P].any()


def test_dynamic_route_limits_x_to_its_subject():
    layout = TokenLayout(prompt_len=2, x_len=4, caption_lens=(1, 1), image_lens=(2, 2))
    route = torch.tensor([[0, 1, -1, 0]])
    m = routes.allowed_mask(layout, routes.RoutePlan(route=route), 1)[0]
    x = layout.x.start
    img0, img1 = layout.image(0), layout.image(1)
    assert m[x, img0].all() and not m[x, img1].any()
    assert m[x + 1, img1].all() and not m[x + 1, img0].any()
    assert not m[x + 2, img0].any() and not m[x + 2, img1].any() and m[x + 2, layout.prompt].all()


def test_allowed_fraction_shrinks_with_routing():
    layout = TokenLayout(prompt_len=128, x_len=1024, caption_lens=(8,) * 3, image_lens=(1024,) * 3)
    static = routes.allowed_fraction(layout, routes.RoutePlan())
    route = torch.arange(1024).remainder(3)[None]
    dynamic = routes.allowed_fraction(layout, routes.RoutePlan(route=route))
    assert dynamic < static < 0.7


def test_subject_mass_scores_sum_to_the_attention_on_references():
    layout = _layout(3)
    q, k, _ = _qkv(layout, batch=1)
    mass = attention.subject_attention_mass(q[:, :, layout.x], k, layout, budget=64)
    p = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, -1)[:, :, layout.x]
    for i in range(3):
        want = p[..., layout.image(i)].sum(-1).mean(1)
        torch.testing.assert_close(mass[..., i], want, rtol=1e-5, atol=1e-6)


def test_route_threshold_and_smoothing():
    scores = torch.zeros(1, 9, 2)
    scores[0, :, 0] = 0.5
    scores[0, 4, 0], scores[0, 4, 1] = 0.1, 0.6  # one outlier in the middle of subject 0's area
    assert step_route(scores, (3, 3))[0, 4] == 1  # the run-time route of a step
    assert step_route(scores, (3, 3), smoothing=3)[0, 4] == 0
    low = step_route(scores * 0.1, (3, 3), threshold=0.2)
    assert (low == routes.BACKGROUND).all()


@pytest.mark.parametrize("spec,err", [("d9", "2 double"), ("x1", "not understood"), ("s3-1", "low to high"), ("s4", "4 single")])
def test_bad_routing_blocks_are_explained(spec, err):
    with pytest.raises(RoutingError, match=err):
        routes.parse_blocks(spec, depth=2, single_depth=4)


def test_routing_blocks_parse():
    assert routes.parse_blocks("d1, s0-1", 2, 4) == {("double", 1), ("single", 0), ("single", 1)}
    assert len(routes.parse_blocks("all", 2, 4)) == 6


@pytest.mark.parametrize("kind", ["static", "dense", "dynamic", "dynamic-nostatic"])
def test_cached_condition_step_matches_the_full_step_on_prompt_and_canvas(kind):
    layout = _layout(3, extra=2)
    q, k, v = _qkv(layout)
    plan = _plan(kind, layout, 2, seed=3)
    full = attention.routed_attention(q, k, v, layout, plan, attention.sdpa)
    keep = torch.cat([torch.arange(layout.prompt_len), torch.arange(layout.canvas.start, layout.canvas.stop)])
    short = attention.routed_attention(q[:, :, keep], k, v, layout, plan, attention.sdpa, rows=(layout.prompt, layout.canvas))
    torch.testing.assert_close(short, full[:, keep], rtol=1e-5, atol=1e-5)
