"""The exact cell reader and scorer of toy-world images, the counterfactual T / L, and the
evaluation's statistics."""

import random

import numpy as np
import pytest

from toyworld.codec import CellCodec
from toyworld.detector import (
    counterfactual,
    identity_of,
    read_cells,
    read_panel,
    score,
)
from toyworld.errors import ToyWorldError
from toyworld.gate import distinct_identities
from toyworld.stats import mcnemar, paired_bootstrap, wilson
from toyworld.world import BLOCK, NAMES, SLOTS, Identity, Placed, World, cell_indices, paint, render


def _case(n: int, seed: int):
    world, rnd = World(0), random.Random(seed)
    idents = distinct_identities(world.identities, n, rnd)
    return [Placed(i, s) for i, s in zip(idents, rnd.sample(list(SLOTS), n))], rnd.choice(world.backgrounds)


def _image(cells: np.ndarray) -> np.ndarray:
    return paint(np.asarray(NAMES, dtype=object)[cells])


def test_rendered_and_codec_round_tripped_scenes_are_read_exactly():
    codec = CellCodec.for_world(0)
    import torch

    noise = torch.Generator().manual_seed(0)
    for k in range(80):
        placed, background = _case(1 + k % 4, k)
        image = np.asarray(render(placed, background))
        assert np.array_equal(read_cells(image), cell_indices(placed, background))
        pixels = torch.from_numpy(image.copy())[None].float() / 255.0
        noisy = codec.decode(codec.encode(pixels) + 0.05 * torch.randn(1, 16, 16, 16, generator=noise))[0]  # model-like error
        for img in (image, noisy):
            s = score(img, placed)
            assert s["all_right"] and not s["any_entangled"] and s["leaked"] == 0
            assert (s["missing"], s["extra"], s["duplicated"]) == (0, 0, 0)
        blocks = read_panel(image)
        assert [identity_of(blocks[p.slot]) for p in placed] == [p.identity for p in placed]
        assert sum(b.present for b in blocks.values()) == len(placed)


def _slot(cells, slot):
    r, c = SLOTS[slot]
    return cells[r:r + BLOCK, c:c + BLOCK]


def test_defects_are_scored_as_defined():
    placed, background = _case(3, 7)
    cells = cell_indices(placed, background).astype(np.int64)
    other = NAMES.index(placed[1].identity.first)
    leaky = cells.copy()
    _slot(leaky, placed[0].slot)[np.unravel_index([0, 7, 14, 21, 28, 35], (BLOCK, BLOCK))] = other  # 16.7 %
    s = score(leaky, placed)
    assert s["entangled"] == [True, False, False] and s["right"] == [False, True, True]
    assert s["leaked"] == pytest.approx(6 / (3 * 36))
    few = cells.copy()
    _slot(few, placed[0].slot)[np.unravel_index([0, 14, 28], (BLOCK, BLOCK))] = other  # 3 cells: still right
    s = score(few, placed)
    assert s["right"][0] and not s["entangled"][0]
    empty_slot = next(slot for slot in SLOTS if slot not in {p.slot for p in placed})
    missing = cells.copy()
    _slot(missing, placed[2].slot)[:] = NAMES.index(background)
    _slot(missing, empty_slot)[:] = _slot(cells, placed[0].slot)  # placed[0] drawn twice
    s = score(missing, placed)
    assert (s["missing"], s["extra"], s["duplicated"]) == (1, 1, 1) and s["right"] == [True, True, False]


def test_counterfactual_transfer_and_leak():
    placed, background = _case(3, 11)
    used = {c for p in placed for c in p.identity.colours}
    new = next(i for i in World(0).identities if i.pattern == placed[1].identity.pattern
               and not set(i.colours) & used)
    before = cell_indices(placed, background)
    after = cell_indices([placed[0], Placed(new, placed[1].slot), placed[2]], background)
    assert counterfactual(before, after, placed, 1, new) == {"T": 1.0, "L": 0.0}
    leaked = after.copy()
    _slot(leaked, placed[2].slot)[:3] = NAMES.index(new.first)  # half of subject 2's cells take B''s colour
    assert counterfactual(before, leaked, placed, 1, new) == {"T": 1.0, "L": 0.25}
    assert counterfactual(before, before, placed, 1, new) == {"T": 0.0, "L": 0.0}
    assert counterfactual(_image(before), _image(after), placed, 1, new)["T"] == 1.0


def test_reader_refuses_what_is_not_one_image():
    with pytest.raises(ToyWorldError, match="one RGB image"):
        read_cells(np.zeros((2, 128, 128, 3), np.uint8))
    with pytest.raises(ToyWorldError, match="multiples of 8"):
        read_cells(np.zeros((100, 128, 3), np.uint8))


def test_statistics_match_known_values():
    lo, hi = wilson(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-4) and hi == pytest.approx(0.7007, abs=1e-4)
    assert wilson(0, 50)[0] == pytest.approx(0.0, abs=1e-12) and wilson(0, 50)[1] == pytest.approx(0.0714, abs=1e-4)
    assert mcnemar([1, 1, 1, 0, 0], [0, 0, 0, 0, 0]) == {"x_only": 3, "y_only": 0, "p": 0.25}
    assert mcnemar([1, 0], [1, 0])["p"] == 1.0
    rng = np.random.default_rng(0)
    y = rng.random(200)
    clear = paired_bootstrap(y - 0.2, y, seed=1)  # every case lower by 0.2: interval excludes 0
    assert clear["diff"] == pytest.approx(-0.2) and clear["hi"] < 0
    noise = paired_bootstrap(y + rng.normal(0, 0.3, 200), y, seed=1)
    assert noise["lo"] < noise["diff"] < noise["hi"]
    ratio = paired_bootstrap([1, 1], [4, 4], [2, 2], [4, 4], ratio=True)
    assert ratio["diff"] == pytest.approx(-0.25)
    assert paired_bootstrap(y, y, seed=3) == paired_bootstrap(y, y, seed=3)


def test_one_cell_reads_the_nearest_palette_colour():
    cells = np.array([[NAMES.index("red"), NAMES.index("grey")]])
    image = _image(cells).astype(np.int16)
    image[:8, :8] += 30  # a red off by 30 per channel is still red
    assert read_cells(np.clip(image, 0, 255).astype(np.uint8)).tolist() == cells.tolist()
    assert Identity.of("red", "blue", "plain") == identity_of(read_panel(cell_indices(
        [Placed(Identity.of("red", "blue", "plain"), "top left")], "grey").astype(np.int64))["top left"])
