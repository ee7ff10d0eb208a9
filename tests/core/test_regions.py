"""Layout regions: hard regions give exactly the requested route, soft regions bias it, and
bad regions (wrong shape, empty, a batch, too small to hold a token) are refused."""

import pytest
import torch

from musar.errors import LayoutError, RoutingError
from musar.regions import Region, check_mask, region_map, step_route
from musar.routes import BACKGROUND, UNROUTED, argmax_route, smooth_scores

GRID = (4, 6)  # 4 rows x 6 cols of tokens = a 96 x 64 px image


def _box(top, left, bottom, right, size=(64, 96)):
    m = torch.zeros(size)
    m[top:bottom, left:right] = 1.0
    return m


def _scores(favourite, n=3, batch=1):
    """Route scores where every token prefers condition ``favourite`` (0.5 vs 0.2)."""
    s = torch.full((batch, GRID[0] * GRID[1], n), 0.2)
    s[..., favourite] = 0.5
    return s


def _grid_route(route):
    return route.reshape(-1, *GRID)


def test_hard_regions_give_exactly_the_requested_route_before_any_scores():
    left, right = Region(_box(0, 0, 64, 48)), Region(_box(0, 48, 64, 96))
    regions = region_map([left, None, right], ["a", "b", "c"], GRID)
    route = _grid_route(step_route(None, GRID, regions=regions, batch=2))
    assert route.shape == (2, 4, 6)
    assert (route[:, :, :3] == 0).all() and (route[:, :, 3:] == 2).all()


def test_outside_hard_regions_tokens_are_unrouted_without_scores_and_argmax_with_them():
    regions = region_map([Region(_box(0, 0, 32, 96)), None, None], ["a", "b", "c"], GRID)
    route = _grid_route(step_route(None, GRID, regions=regions))
    assert (route[:, :2] == 0).all() and (route[:, 2:] == UNROUTED).all()
    route = _grid_route(step_route(_scores(1), GRID, regions=regions))
    assert (route[:, :2] == 0).all() and (route[:, 2:] == 1).all()  # outside: scores decide


def test_inside_a_hard_region_the_threshold_does_not_apply():
    regions = region_map([Region(_box(0, 0, 32, 96)), None], ["a", "b"], GRID)
    route = _grid_route(step_route(_scores(1, n=2) * 0.1, GRID, threshold=0.3, regions=regions))
    assert (route[:, :2] == 0).all() and (route[:, 2:] == BACKGROUND).all()


def test_overlapping_hard_regions_choose_by_scores_then_by_coverage():
    whole, half = Region(_box(0, 0, 64, 96)), Region(_box(0, 0, 64, 48))
    regions = region_map([whole, half, None], ["a", "b", "c"], GRID)
    with_scores = _grid_route(step_route(_scores(1), GRID, regions=regions))
    assert (with_scores[:, :, :3] == 1).all() and (with_scores[:, :, 3:] == 0).all()
    with_scores = _grid_route(step_route(_scores(2), GRID, regions=regions))
    assert (with_scores == 0).all()  # c is preferred but every token is inside a or b; a = b: a
    no_scores = _grid_route(step_route(None, GRID, regions=regions))
    assert (no_scores == 0).all()  # equal coverage: the lower index


def test_soft_region_biases_the_share_and_strength_decides():
    s = torch.zeros(1, 24, 2)
    s[..., 0], s[..., 1] = 0.3, 0.2  # shares 0.6 / 0.4 everywhere
    weak = region_map([None, Region(_box(0, 0, 64, 96), "soft", 0.1)], ["a", "b"], GRID)
    strong = region_map([None, Region(_box(0, 0, 64, 96), "soft", 0.3)], ["a", "b"], GRID)
    assert (step_route(s, GRID, regions=weak) == 0).all()
    assert (step_route(s, GRID, regions=strong) == 1).all()
    left_only = region_map([None, Region(_box(0, 0, 64, 48), "soft", 0.3)], ["a", "b"], GRID)
    route = _grid_route(step_route(s, GRID, regions=left_only))
    assert (route[:, :, :3] == 1).all() and (route[:, :, 3:] == 0).all()
    assert step_route(None, GRID, regions=strong) is None  # soft regions need scores


def test_soft_regions_keep_the_threshold_on_the_attention_mass():
    s = torch.zeros(1, 24, 2)
    s[..., 0], s[..., 1] = 0.05, 0.01
    regions = region_map([None, Region(_box(0, 0, 64, 96), "soft", 1.0)], ["a", "b"], GRID)
    assert (step_route(s, GRID, threshold=0.03, regions=regions) == BACKGROUND).all()


def test_no_regions_is_the_plain_argmax_route():
    s = torch.rand(2, 24, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(step_route(s, GRID, 0.2, 3), argmax_route(smooth_scores(s, GRID, 3), 0.2))
    assert step_route(None, GRID) is None


def test_a_region_of_another_shape_is_refused_and_any_resolution_of_the_right_shape_is_not():
    with pytest.raises(LayoutError, match="32x64 px but the image is 96x64"):
        region_map([Region(_box(0, 0, 64, 32, size=(64, 32)))], ["reference 1"], GRID)
    scaled = region_map([Region(_box(0, 0, 16, 12, size=(32, 48)))], ["a"], GRID)
    exact = region_map([Region(_box(0, 0, 32, 24))], ["a"], GRID)
    assert torch.equal(scaled.coverage, exact.coverage)


def test_empty_batched_and_too_small_regions_are_refused():
    with pytest.raises(LayoutError, match="empty"):
        check_mask(torch.zeros(1, 64, 96), "the region of subject 'a'")
    with pytest.raises(LayoutError, match="batch of 2"):
        check_mask(torch.ones(2, 64, 96), "the region of subject 'a'")
    with pytest.raises(LayoutError, match="NaN"):
        check_mask(torch.full((64, 96), float("nan")), "the region of subject 'a'")
    with pytest.raises(LayoutError, match="covers no token"):
        region_map([Region(_box(0, 0, 4, 4))], ["subject 'a'"], GRID)
    assert region_map([Region(_box(0, 0, 4, 4), "soft")], ["a"], GRID) is not None
    with pytest.raises(RoutingError, match="unknown option 'firm'"):
        Region(torch.ones(4, 4), "firm")
