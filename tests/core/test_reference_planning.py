"""The per-call decision with routed references and layout regions (no ComfyUI): the layout
holds the references, the plan carries prompt <-> reference blocking, hard regions route from
the first step (with dynamic routing off too), and a call with other conditions than the
route's stays static."""

import torch
from tiny import attachment

from musar import planning
from musar.regions import Region, region_map
from musar.routes import UNROUTED
from musar.session import RunState
from musar.settings import RoutingSettings

GRID = (2, 4)
SCHEDULE = (1.0, 0.8, 0.6, 0.0)


def _schedule(hard_regions=False, **kw):
    settings = RoutingSettings(**{"start_percent": 0.0, "smoothing": 1, **kw})
    return planning.resolve(settings, lambda p: 1.0 - p, 2, 2, hard_regions=hard_regions)


def _shape(sigma, refs=(3, 5), batch=1, kinds=(0,)):
    return planning.CallShape(prompt_len=4, grid=GRID, reference_lens=refs, batch=batch,
                              kinds=kinds, sigma=sigma, schedule=SCHEDULE)


def _left_right():
    left, right = torch.zeros(32, 64), torch.zeros(32, 64)
    left[:, :32], right[:, 32:] = 1, 1
    return region_map([Region(left), Region(right)], ["reference 1", "reference 2"], GRID)


def test_routed_references_make_the_layout_and_the_plan():
    schedule, run = _schedule(block_prompt_references=True), RunState()
    call = planning.plan_call(attachment(schedule), run, _shape(1.0))
    assert call.layout.reference_lens == (3, 5) and call.layout.n_routed == 2
    assert call.plan.block_prompt_references and call.plan.route is None and call.collect
    call.add_scores(torch.tensor([[[0.9, 0.1]] * 8]))
    call.finish()
    second = planning.plan_call(attachment(schedule), run, _shape(0.8))
    assert torch.equal(second.plan.route, torch.zeros(1, 8, dtype=torch.long))


def test_hard_regions_route_from_the_first_step():
    schedule, run = _schedule(hard_regions=True), RunState()
    call = planning.plan_call(attachment(schedule), run, _shape(1.0, batch=2, kinds=(1, 0)),
                              _left_right())
    want = torch.tensor([0, 0, 1, 1] * 2)
    assert torch.equal(call.plan.route, want.expand(2, -1))
    assert torch.equal(run.routes[0][1], want[None].to(torch.int16))


def test_hard_regions_route_with_dynamic_routing_off_and_collect_nothing():
    schedule, run = _schedule(hard_regions=True, dynamic_routing=False), RunState()
    left = torch.zeros(32, 64)
    left[:, :32] = 1
    regions = region_map([Region(left), None], ["reference 1", "reference 2"], GRID)
    for sigma in (1.0, 0.8):
        call = planning.plan_call(attachment(schedule), run, _shape(sigma), regions)
        assert not call.collect
        assert torch.equal(call.plan.route, torch.tensor([[0, 0, UNROUTED, UNROUTED] * 2]))


def test_a_call_without_the_routes_conditions_stays_static_and_collects_nothing():
    schedule, run = _schedule(hard_regions=True), RunState()
    planning.plan_call(attachment(schedule), run, _shape(1.0), _left_right())
    uncond = planning.plan_call(attachment(schedule), run, _shape(1.0, refs=()), _left_right())
    assert uncond.plan.route is None and not uncond.collect and uncond.layout.n_routed == 0
    one_ref = planning.plan_call(attachment(schedule), run, _shape(1.0, refs=(4,)), _left_right())
    assert one_ref.plan.route is None  # the route names reference 2, this call has one
