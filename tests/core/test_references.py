"""Routed references (ReferenceLatent tokens as conditions): the layout's segments, the static
and dynamic masks against an independent statement of the rules, routed attention against the
dense masked reference, route scores, and no L x L tensor."""

import itertools

import pytest
import torch

from musar import attention, routes
from musar.errors import LayoutError
from musar.layout import NOISY, SUBJECT, TokenLayout
from musar.routes import BACKGROUND, UNROUTED, RoutePlan
from tests.core.test_no_lxl import LargestAllocation


def _layout(n_subjects, n_refs, seed=0, prompt=5, x=16):
    g = torch.Generator().manual_seed(seed)
    caps = tuple(int(v) for v in torch.randint(1, 6, (n_subjects,), generator=g))
    imgs = tuple(int(v) for v in torch.randint(3, 10, (n_subjects,), generator=g))
    refs = tuple(int(v) for v in torch.randint(2, 12, (n_refs,), generator=g))
    return TokenLayout(prompt_len=prompt, x_len=x, caption_lens=caps, image_lens=imgs,
                       reference_lens=refs)


def _qkv(layout, batch=2, heads=3, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.total, dim, generator=g) for _ in range(3)]


def _route(layout, batch, seed=0):
    """Every kind of route value: each condition, background and unrouted."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(UNROUTED, layout.n_routed, (batch, layout.x_len), generator=g)


def _rows(layout, i):
    return torch.cat([torch.arange(s.start, s.stop) for s in layout.condition(i)])


def expected_mask(layout, plan, b=0):
    """The routing rules written out token by token (independent of routes.py's groups)."""
    L, n, P, X = layout.total, layout.n_routed, layout.prompt, layout.canvas
    m = torch.zeros(L, L, dtype=torch.bool)
    conds = [_rows(layout, i) for i in range(n)]
    sees_prompt = [layout.is_reference(i) and not plan.block_prompt_references for i in range(n)]
    if not plan.static:
        m[:] = True
    else:
        m[X] = True
        m[P, P] = True
        m[P, X] = True
        for i in range(n):
            m[conds[i][:, None], conds[i][None]] = True
            m[conds[i], X] = True
            if sees_prompt[i]:
                m[conds[i], P] = True
                m[P, conds[i]] = True
    if plan.route is None:
        return _isolate(m, plan, conds)
    route = plan.route[b]
    x0 = layout.x.start
    for p, r in enumerate(route.tolist()):
        row = torch.zeros(L, dtype=torch.bool)
        if r == UNROUTED:
            row[:] = True
        else:
            row[P], row[X] = True, True
            if r >= 0:
                row[conds[r]] = True
        m[x0 + p] = row
    if plan.symmetric:
        for i in range(n):
            row = torch.zeros(L, dtype=torch.bool)
            row[conds[i]] = True
            row[layout.extra] = True
            row[x0 + torch.nonzero((route == i) | (route == UNROUTED)).flatten()] = True
            if not plan.static or sees_prompt[i]:
                row[P] = True
            m[conds[i]] = row
    return _isolate(m, plan, conds)


def _isolate(m, plan, conds):
    """Isolation: a condition's queries see its own tokens, nothing else."""
    if plan.isolated:
        for rows in conds:
            m[rows] = False
            m[rows[:, None], rows[None]] = True
    return m


def _plans(layout, batch, seed):
    route = _route(layout, batch, seed)
    for block in (False, True):
        yield f"static-block{block}", RoutePlan(block_prompt_references=block)
        yield f"dynamic-block{block}", RoutePlan(route=route, block_prompt_references=block)
        yield f"symmetric-block{block}", RoutePlan(route=route, symmetric=True,
                                                   block_prompt_references=block)
    yield "dynamic-nostatic", RoutePlan(static=False, route=route)
    yield "symmetric-nostatic", RoutePlan(static=False, route=route, symmetric=True)
    for static in (True, False):
        yield f"isolated-static{static}", RoutePlan(static=static, isolated=True)
        yield f"isolated-dynamic-static{static}", RoutePlan(static=static, route=route, isolated=True)
    yield "isolated-weighted", RoutePlan(route=route, isolated=True,
                                         weights=tuple(0.5 for _ in range(layout.n_routed)))


@pytest.mark.parametrize("n_subjects,n_refs", [(0, m) for m in range(1, 7)] + [(2, 3), (1, 6)])
def test_reference_plans_follow_the_rules_token_by_token(n_subjects, n_refs):
    layout = _layout(n_subjects, n_refs, seed=n_refs)
    for name, plan in _plans(layout, 2, seed=n_refs):
        got = routes.allowed_mask(layout, plan, 2)
        for b in range(2):
            assert torch.equal(got[b], expected_mask(layout, plan, b)), name


@pytest.mark.parametrize("n_subjects,n_refs", [(0, m) for m in range(1, 7)] + [(2, 3), (1, 6)])
def test_routed_attention_with_references_matches_dense_reference(n_subjects, n_refs):
    layout = _layout(n_subjects, n_refs, seed=n_refs)
    q, k, v = _qkv(layout, seed=n_refs)
    def gather(q_, k_, v_):  # a kernel without a log-sum-exp twin: the gather executor
        return attention.sdpa(q_, k_, v_)

    for name, plan in _plans(layout, 2, seed=n_refs):
        want = attention.dense_reference(q, k, v, layout, plan)
        for kernel in (attention.sdpa, gather):  # log-sum-exp and gather executors
            got = attention.routed_attention(q, k, v, layout, plan, kernel)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_isolated_conditions_see_only_their_own_tokens_and_are_seen_as_routed():
    layout = TokenLayout(prompt_len=2, x_len=4, caption_lens=(1,), image_lens=(2,),
                         reference_lens=(3, 2))
    route = torch.tensor([[0, 1, 2, BACKGROUND]])
    m = routes.allowed_mask(layout, RoutePlan(route=route, isolated=True), 1)[0]
    for i in range(3):
        own = _rows(layout, i)
        assert m[own][:, own].all() and m[own].sum() == len(own) ** 2
    x = layout.x.start
    assert m[x, _rows(layout, 0)].all() and not m[x, _rows(layout, 1)].any()
    assert m[layout.prompt, layout.reference(0)].all()  # the prompt still sees references
    assert not RoutePlan(static=False, isolated=True).is_dense
    with pytest.raises(routes.RoutingError, match="isolat"):
        RoutePlan(route=route, symmetric=True, isolated=True)


def test_static_routing_blocks_reference_pairs_and_keeps_the_prompt_by_default():
    layout = TokenLayout(prompt_len=2, x_len=4, reference_lens=(3, 2))
    m = routes.allowed_mask(layout, RoutePlan(), 1)[0]
    r0, r1, P, X = layout.reference(0), layout.reference(1), layout.prompt, layout.x
    assert not m[r0, r1].any() and not m[r1, r0].any()
    assert m[r0, P].all() and m[P, r0].all() and m[r0, X].all() and m[X].all()
    blocked = routes.allowed_mask(layout, RoutePlan(block_prompt_references=True), 1)[0]
    assert not blocked[r0, P].any() and not blocked[P, r1].any() and blocked[r0, r0].all()


def test_blocked_reference_pairs_carry_no_information():
    """Changing reference 1's keys/values leaves every other condition's and (when blocked) the
    prompt's attention output bit-identical."""
    layout = _layout(1, 3, seed=4)
    q, k, v = _qkv(layout, seed=4)
    r1 = layout.reference(1)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, r1], v2[:, :, r1] = torch.randn_like(k[:, :, r1]), torch.randn_like(v[:, :, r1])
    for block in (False, True):
        plan = RoutePlan(block_prompt_references=block)
        a = attention.routed_attention(q, k, v, layout, plan, attention.sdpa)
        b = attention.routed_attention(q, k2, v2, layout, plan, attention.sdpa)
        for i in (0, 1, 3):  # subject 0, references 0 and 2
            rows = _rows(layout, i)
            assert torch.equal(a[:, rows], b[:, rows])
        assert torch.equal(a[:, layout.prompt], b[:, layout.prompt]) == block
        assert not torch.equal(a[:, layout.x], b[:, layout.x])


def test_a_token_routed_to_a_reference_sees_only_that_condition():
    layout = TokenLayout(prompt_len=2, x_len=4, caption_lens=(1,), image_lens=(2,),
                         reference_lens=(2, 3))
    route = torch.tensor([[1, 2, BACKGROUND, UNROUTED]])
    m = routes.allowed_mask(layout, RoutePlan(route=route), 1)[0]
    x = layout.x.start
    assert m[x, layout.reference(0)].all() and not m[x, layout.reference(1)].any()
    assert not m[x, layout.image(0)].any()
    assert m[x + 1, layout.reference(1)].all() and not m[x + 1, layout.reference(0)].any()
    assert not m[x + 2, layout.reference(0)].any() and m[x + 2, layout.prompt].all()
    assert m[x + 3].all()


def test_layout_places_references_between_canvas_and_subject_images():
    layout = TokenLayout(prompt_len=3, x_len=8, caption_lens=(2,), image_lens=(4,),
                         reference_lens=(5, 6))
    assert (layout.n_routed, layout.n_references) == (3, 2)
    assert layout.reference(0) == slice(13, 18) and layout.reference(1) == slice(18, 24)
    assert layout.image(0) == slice(24, 28) and layout.total == 28
    assert layout.condition(1) == (layout.reference(0),) and layout.route_keys(2) == layout.reference(1)
    assert layout.modulation_dims("img") == [(0, 19, 0), (19, 23, 1)]
    classes = layout.token_classes("img")
    assert (classes[:19] == NOISY).all() and (classes[19:] == SUBJECT).all()
    assert layout.without_conditions().reference_lens == (5, 6)
    with pytest.raises(LayoutError, match="routed or not"):
        TokenLayout(prompt_len=3, x_len=8, extra_len=4, reference_lens=(4,))
    with pytest.raises(LayoutError, match="at most 16"):
        TokenLayout(prompt_len=3, x_len=8, reference_lens=(1,) * 17)


def test_route_scores_cover_references():
    layout = _layout(1, 2, seed=2)
    q, k, _ = _qkv(layout, batch=1, seed=2)
    mass = attention.subject_attention_mass(q[:, :, layout.x], k, layout, budget=64)
    p = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, -1)[:, :, layout.x]
    assert mass.shape[-1] == 3
    for i in range(3):
        want = p[..., layout.route_keys(i)].sum(-1).mean(1)
        torch.testing.assert_close(mass[..., i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_reference_routing_never_allocates_l_by_l(kind):
    layout = TokenLayout(prompt_len=32, x_len=576, reference_lens=(256, 256, 144))
    q, k, v = _qkv(layout, batch=2, heads=2, dim=32)
    route = (torch.arange(576) % 24 * 3 // 24).expand(2, -1).clone()
    plan = RoutePlan(route=route) if kind == "dynamic" else RoutePlan()
    with LargestAllocation() as seen:
        attention.routed_attention(q, k, v, layout, plan, attention.sdpa)
    assert seen.numel < layout.total ** 2
    with LargestAllocation() as dense:
        attention.dense_reference(q, k, v, layout, plan)
    assert dense.numel >= layout.total ** 2


@pytest.mark.parametrize("block", [False, True])
def test_allowed_fraction_of_static_reference_routing_is_the_closed_form(block):
    """FLUX.2-like shapes: prompt 512, canvas 4096, references of 1024 tokens. Prompt and canvas
    rows see every key (the prompt: all but the references when blocked), reference rows see
    themselves, the canvas and (unblocked) the prompt."""
    fractions = []
    for n in (2, 4, 6, 10):
        layout = TokenLayout(prompt_len=512, x_len=4096, reference_lens=(1024,) * n)
        L, P, X, r = layout.total, 512, 4096, 1024
        prompt_keys = P + X if block else L
        ref_keys = r + X + (0 if block else P)
        want = (P * prompt_keys + X * L + n * r * ref_keys) / L ** 2
        got = routes.allowed_fraction(layout, RoutePlan(block_prompt_references=block))
        assert got == pytest.approx(want)
        fractions.append(got)
    assert all(a > b for a, b in itertools.pairwise(fractions))


@pytest.mark.parametrize("kind", ["static", "dynamic", "dense"])
@pytest.mark.parametrize("executor", ["lse", "gather"])
def test_reference_strength_weights_the_canvas_attention_like_the_dense_reference(kind, executor):
    """A canvas query's softmax mass on a weighted reference is scaled by its strength (logits
    + log w), exactly, by either executor; strength 0 equals removing the reference from the
    canvas's view; other queries are untouched."""
    layout = TokenLayout(5, 16, (2,), (4,), reference_lens=(6, 3))
    q, k, v = (torch.randn(2, 2, layout.total, 8, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    route = None if kind != "dynamic" else torch.randint(0, 3, (2, 16), generator=torch.Generator().manual_seed(3))
    weights = (1.0, 0.25, 0.0)
    plan = RoutePlan(kind != "dense", route, weights=weights)
    kernel = attention.sdpa if executor == "lse" else (
        lambda q_, k_, v_: attention.sdpa(q_, k_, v_))  # no lse twin: the gather executor
    got = attention.routed_attention(q, k, v, layout, plan, kernel)
    want = attention.dense_reference(q, k, v, layout, plan)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    unweighted = attention.routed_attention(q, k, v, layout, RoutePlan(kind != "dense", route), kernel)
    assert (got[:, layout.x] - unweighted[:, layout.x]).abs().max() > 1e-2  # the weights act
    torch.testing.assert_close(got[:, layout.prompt], unweighted[:, layout.prompt])
    # strength 0: the canvas never sees reference 2; its keys carry no information to the canvas
    k2, v2 = k.clone(), v.clone()
    k2[:, :, layout.reference(1)] += 5.0
    v2[:, :, layout.reference(1)] -= 3.0
    again = attention.routed_attention(q, k2, v2, layout, plan, kernel)
    assert torch.equal(again[:, layout.x], got[:, layout.x])
