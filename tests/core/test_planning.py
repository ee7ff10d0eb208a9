"""The per-call decision (route of this step, plan, condition cache, score collection) and the
run recorder, without ComfyUI: the glue only feeds ``plan_call`` what the sampler says."""

import pytest
import torch
from tiny import attachment

from musar import planning
from musar.errors import RoutingError
from musar.routes import parse_blocks
from musar.session import Recorder, RunState, fingerprint
from musar.settings import RoutingSettings

SCHEDULE = (1.0, 0.8, 0.6, 0.4, 0.0)
GRID = (2, 4)
SEGMENTS = ((3, 2), (4, 4))  # caption_lens, image_lens of two subjects


def _schedule(**kw):
    percent_to_sigma = lambda p: 1.0 - p  # noqa: E731  (a linear schedule)
    return planning.resolve(RoutingSettings(**{"start_percent": 0.0, **kw}), percent_to_sigma, 2, 2)


def _shape(sigma, batch=1, kinds=(0,), schedule=SCHEDULE, inputs=()):
    return planning.CallShape(prompt_len=5, grid=GRID, batch=batch, kinds=kinds, sigma=sigma,
                              schedule=schedule, inputs=inputs)


def _step(resolved, run, sigma, scores=None, finish=True, **kw):
    """One model call: plan it, then (as the routing blocks would) hand it route scores; with
    ``finish`` False the call stops part-way (an interrupt inside a block)."""
    call = planning.plan_call(attachment(resolved, *SEGMENTS), run, _shape(sigma, **kw))
    if call.collect and scores is not None:
        call.add_scores(scores)
    if finish:
        call.finish()
    return call


def _scores(batch, subject_of_token):
    s = torch.full((batch, 8, 2), 0.1)
    for b, owner in enumerate(subject_of_token):
        s[b, torch.arange(8), owner] = 0.9
    return s


def test_resolve_turns_percents_into_a_sigma_window_and_checks_blocks_against_the_model():
    r = planning.resolve(RoutingSettings(start_percent=0.25, end_percent=0.75), lambda p: 1 - p, 2, 3)
    assert (r.sigma_start, r.sigma_end) == (0.75, 0.25)
    assert r.blocks == parse_blocks("double", 2, 3) and r.dynamic_at(0.5) and not r.dynamic_at(0.8)
    assert planning.resolve(RoutingSettings(dynamic_routing=False), lambda p: 1 - p, 2, 3).blocks == frozenset()
    with pytest.raises(RoutingError, match="2 double blocks"):
        planning.resolve(RoutingSettings(routing_blocks="d5"), lambda p: 1 - p, 2, 3)


def test_first_step_is_static_and_later_steps_use_the_previous_steps_route():
    schedule, run = _schedule(smoothing=1), RunState()
    left = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    first = _step(schedule, run, 1.0, _scores(1, [left]))
    assert first.plan.route is None and first.plan.static and first.collect
    second = _step(schedule, run, 0.8, _scores(1, [1 - left]))
    assert torch.equal(second.plan.route, left[None])
    assert torch.equal(_step(schedule, run, 0.6).plan.route, (1 - left)[None])
    assert [sigma for sigma, _ in run.routes] == [0.8, 0.6]
    assert second.layout.total == 5 + 3 + 2 + 8 + 4 + 4


def test_cond_decides_the_route_for_uncond_and_every_image_keeps_its_own():
    schedule, run = _schedule(smoothing=1), RunState()
    a, b = torch.tensor([0] * 4 + [1] * 4), torch.tensor([1] * 4 + [0] * 4)
    scores = torch.cat([_scores(2, [b, a]), _scores(2, [a, b])])  # rows: uncond (2), cond (2)
    _step(schedule, run, 1.0, scores, batch=4, kinds=(1, 0))
    call = _step(schedule, run, 0.8, batch=4, kinds=(1, 0))
    assert torch.equal(call.plan.route, torch.stack([a, b, a, b]))
    assert torch.equal(run.routes[-1][1], torch.stack([a, b]).to(torch.int16))  # one per image
    alone = _step(schedule, run, 0.8, batch=2, kinds=(0,))  # ComfyUI ran cond apart: same route
    assert torch.equal(alone.plan.route, torch.stack([a, b])) and len(run.routes) == 1


def test_scores_are_collected_only_when_a_later_step_routes():
    schedule = _schedule(start_percent=0.0, end_percent=0.5)  # sigma window [0.5, 1.0]
    run = RunState()
    assert _step(schedule, run, 1.0).collect  # next step 0.8 routes
    assert not _step(schedule, run, 0.6).collect  # next step 0.4 is outside the window
    assert not _step(schedule, run, 0.4).collect  # the last step: nothing follows
    assert _step(schedule, run, 0.9, schedule=None).collect  # outside a sampler: keep scores
    assert not _step(_schedule(dynamic_routing=False), RunState(), 1.0).collect


def test_route_is_dropped_when_the_batch_changes_mid_run():
    schedule, run = _schedule(smoothing=1), RunState()
    _step(schedule, run, 1.0, _scores(1, [torch.zeros(8, dtype=torch.long)]))
    call = _step(schedule, run, 0.8, batch=3, kinds=(0,))
    assert call.plan.route is None and not call.plan.symmetric


def test_symmetric_only_where_a_route_exists():
    schedule, run = _schedule(symmetric=True, smoothing=1), RunState()
    assert not _step(schedule, run, 1.0, _scores(1, [torch.zeros(8, dtype=torch.long)])).plan.symmetric
    assert _step(schedule, run, 0.8).plan.symmetric


def test_condition_cache_hits_from_the_second_call_of_the_same_branch_and_inputs():
    schedule, run = _schedule(condition_cache=True, dynamic_routing=False), RunState()
    y = torch.arange(4.0).view(2, 2)
    first = _step(schedule, run, 1.0, batch=2, kinds=(1, 0), inputs=(y,))
    assert not first.cached and first.cache is not None
    assert _step(schedule, run, 0.8, batch=2, kinds=(1, 0), inputs=(y.clone(),)).cached
    changed = _step(schedule, run, 0.7, batch=2, kinds=(1, 0), inputs=(y + 1,))  # other inputs
    assert not changed.cached and changed.cache is not first.cache
    other = _step(schedule, run, 0.6, batch=1, kinds=(0,), inputs=(y,))  # another batch layout
    assert not other.cached


def test_cfg_branches_run_apart_keep_one_cache_each():
    schedule, run = _schedule(condition_cache=True, dynamic_routing=False), RunState()
    for sigma in (1.0, 0.8, 0.6):
        calls = [_step(schedule, run, sigma, batch=1, kinds=(k,), inputs=(torch.full((1, 2), k),))
                 for k in (0, 1)]
        assert all(c.cached == (sigma < 1.0) for c in calls)
    assert len(run.caches) == 2


def test_a_cache_whose_call_stopped_part_way_is_never_read():
    schedule, run = _schedule(condition_cache=True, dynamic_routing=False), RunState()
    _step(schedule, run, 1.0, finish=False)  # interrupted inside a block
    again = _step(schedule, run, 0.8)
    assert not again.cached and len(run.caches) == 1


def _run(recorder, prompt, node, output, routes=1):
    run = recorder.begin((prompt, node))
    run.routes = [(1.0, torch.full((1, 8), i, dtype=torch.int16)) for i in range(routes)]
    run.output = fingerprint(output)
    return run


def test_recorder_finds_the_run_that_made_a_latent():
    rec = Recorder(("a", "b"))
    x, y = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    first, second = _run(rec, "p1", "4", x), _run(rec, "p1", "7", y)
    assert rec.find(fingerprint(x)) is first and rec.find(fingerprint(y.clone())) is second
    with pytest.raises(RoutingError, match="was not made by a sampler"):
        rec.find(fingerprint(x + 2))


def test_recorder_refuses_to_guess_between_two_samplers_of_one_prompt():
    rec = Recorder(("a",))
    _run(rec, "p1", "4", torch.zeros(1))
    _run(rec, "p1", "7", torch.ones(1))
    with pytest.raises(RoutingError, match=r"fed 2 samplers \(nodes 4, 7\)"):
        rec.find(None, "p1")
    later = _run(rec, "p2", "4", torch.ones(2))
    assert rec.find(None, "p2") is later and rec.find(None, "p3") is later  # p3: sampler cached


def test_recorder_keeps_routes_of_old_runs_but_frees_their_cache():
    rec = Recorder(("a",))
    old = rec.begin(("p", "1"))
    old.condition_cache((), ())
    old.routes = [(1.0, torch.zeros(1, 8, dtype=torch.int16))]
    for i in range(40):
        rec.begin(("p", str(i)))
    assert old.caches == [] and old.routes and len(rec.runs) <= 16 and old not in rec.runs


def test_route_overlay_draws_each_image_with_its_own_route():
    from musar.images import route_masks, route_overlay

    images = torch.rand(2, 16, 32, 3, generator=torch.Generator().manual_seed(0))
    routes = torch.stack([torch.tensor([0, 0, 1, 1] * 2), torch.tensor([1, 1, 0, -1] * 2)])
    overlay, masks = route_overlay(images, routes, GRID, 2, 0.5)
    assert masks.shape == (4, 16, 32)
    for i in range(2):
        assert torch.equal(masks[2 * i:2 * i + 2], route_masks(routes[i], GRID, 2, 16, 32))
    assert not torch.equal(masks[:2], masks[2:])
    _, shared = route_overlay(images, routes[:1], GRID, 2)  # one route for every image
    assert torch.equal(shared[:2], shared[2:])
    with pytest.raises(RoutingError, match="2 images arrived but the sampling run routed 3"):
        route_overlay(images, routes[[0, 1, 1]], GRID, 2)
