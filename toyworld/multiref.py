"""Data of the natively multi-reference toy base (docs/TOY_WORLD.md, "The multi-reference base").

The model sees 1-4 **reference pictures** as ComfyUI ``ReferenceLatent`` tokens with the "index"
reference method (FLUX.2 / Kontext: reference j, counted from 1, gets RoPE index j, rows and
columns from 0) and a prompt that says which image goes in which slot. A reference picture is a
block alone: 6 x 6 cells = 48 x 48 px = a 6 x 6 latent = 3 x 3 tokens (even latent sides, so
ComfyUI patchifies it without padding). No colour or pattern word is ever written: a block's
looks can only come from its reference, its place only from the prompt.

Prompt (fixed word order [chosen]: images in index order, then the background, which the
references do not show and is therefore named [chosen])::

    image 1 at top right, image 2 at bottom left and image 3 at top left on grey.

New words ("image", "at", digits) are ``REF_WORDS``: the toy text encoder takes them as
``extra_words`` (a word's embedding depends only on (seed, word), so every existing word keeps its
features); the model's text-encoder file is its own (``nodes.testing.toy.REF_TEXT_FILE``).

Training (``step_batch``): scenes of 1-4 training-split identities (equally often, pairwise
different) in distinct random slots on a random background; image j is the j-th block drawn, so
image numbers are independent of slots. ``DROPOUT`` of the samples are unconditional: empty
prompt and no references (the stock graph's negative: CLIPTextEncode "" without references).

Gate and evaluation cases use HELD-OUT identities only (never in a training batch); their noise
seeds are disjoint by construction: gate seeds are ``GATE_SEED0`` .. + 95, evaluation seeds are
drawn per case and redrawn if they fall in that range. Pure numpy / torch / PIL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import ToyWorldError, choose
from .eval import draw_subjects
from .gate import distinct_identities
from .world import BACKGROUNDS, BLOCK, CELL, GRID, NAMES, SLOTS, Identity, Placed, World, cell_indices, paint

REF_WORDS = ("image", "at", "1", "2", "3", "4")  # the words the world's vocabulary lacks
REF_MODEL_FILE = "toy_flux_refs.safetensors"  # nodes.testing.toy gives toy_flux_refs* its own text encoder
MAX_REFS = 4
PATCH = 2  # FLUX's patch: a token is 2 x 2 latent pixels (cells)
REF_PX = BLOCK * CELL  # 48 px reference pictures
REF_GRID = (BLOCK // PATCH, BLOCK // PATCH)  # 3 x 3 tokens
REF_TOKENS = REF_GRID[0] * REF_GRID[1]
CANVAS_GRID = (GRID // PATCH, GRID // PATCH)  # 8 x 8 tokens
INDEX_SCALE = 1.0  # FLUX.1's ref_index_scale: the "index" method adds it once per reference
SUBJECT_COUNTS = (1, 2, 3, 4)  # equally often [chosen]
DROPOUT = 0.1  # unconditional samples (empty prompt, no references) [chosen]
GATE_SINGLE, GATE_FOUR = 48, 48  # gate cases: one reference / four references
GATE_SEED0 = 1_000_000  # gate noise seeds GATE_SEED0 .. GATE_SEED0 + 95
EVAL_COUNTS = "2:100,3:200,4:200"


def ref_prompt(slots, background: str) -> str:
    """ "image 1 at top right, image 2 at bottom left on grey." : ``slots[j]`` is image j + 1's."""
    choose(BACKGROUNDS, background, "background")
    for slot in slots:
        choose(SLOTS, slot, "slot")
    if len(set(slots)) != len(slots) or not 1 <= len(slots) <= MAX_REFS:
        raise ToyWorldError(f"expected 1-{MAX_REFS} distinct slots, got {list(slots)}")
    parts = [f"image {j + 1} at {slot}" for j, slot in enumerate(slots)]
    body = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"{body} on {background}."


def reference_cells(identity: Identity) -> np.ndarray:
    """(6, 6) uint8 indices into NAMES: the reference picture of ``identity`` (the block alone)."""
    index = {name: i for i, name in enumerate(NAMES)}
    return np.vectorize(index.__getitem__, otypes=[np.uint8])(identity.cells())


def reference_picture(identity: Identity) -> Image.Image:
    """The 48 x 48 px reference picture of ``identity``."""
    return Image.fromarray(paint(identity.cells()), "RGB")


def grid_ids(rows: int, cols: int, index: float = 0.0) -> torch.Tensor:
    """(rows * cols, 3) float32 (index, row, col) ids in FLUX's row-major token order."""
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                          indexing="ij")
    return torch.stack([torch.full_like(r, float(index)), r, c], -1).reshape(rows * cols, 3)


def reference_ids(count: int, grid: tuple[int, int] = REF_GRID, scale: float = INDEX_SCALE) -> torch.Tensor:
    """(count * tokens, 3) ids of ``count`` references under ComfyUI's "index" method: reference j
    (from 1) has index j * scale, rows and columns from 0 (no offset)."""
    return torch.cat([grid_ids(*grid, index=(j + 1) * scale) for j in range(count)]) if count else \
        torch.zeros(0, 3)


def canvas_ids() -> torch.Tensor:
    return grid_ids(*CANVAS_GRID)


@dataclass(frozen=True)
class RefScene:
    """A scene with its references: ``placed[j]`` is image j + 1 and where it goes."""

    placed: tuple[Placed, ...]
    background: str

    @property
    def prompt(self) -> str:
        return ref_prompt([p.slot for p in self.placed], self.background)

    def cells(self) -> np.ndarray:
        return cell_indices(list(self.placed), self.background)

    def ref_cells(self) -> list[np.ndarray]:
        return [reference_cells(p.identity) for p in self.placed]


@dataclass(frozen=True)
class RefBatch:
    """One training step's samples: canvas cells (B, 16, 16), reference cells (B, MAX_REFS, 6, 6)
    (unused rows are zero and get masked), reference counts (B,) (0 = unconditional), prompts."""

    cells: np.ndarray
    refs: np.ndarray
    counts: np.ndarray
    prompts: list[str]


def train_scene(world: World, rnd: random.Random) -> RefScene:
    placed, background = world.sample_scene(rnd, rnd.choice(SUBJECT_COUNTS), "train")
    return RefScene(tuple(placed), background)


def step_batch(world: World, seed: int, step: int, batch: int, dropout: float = DROPOUT) -> RefBatch:
    """The seeded batch of one step (``random.Random(f"refbase/{seed}/{step}")``)."""
    rnd = random.Random(f"refbase/{seed}/{step}")
    cells, refs = np.zeros((batch, GRID, GRID), np.int64), np.zeros((batch, MAX_REFS, BLOCK, BLOCK), np.int64)
    counts, prompts = np.zeros(batch, np.int64), []
    for i in range(batch):
        scene, dropped = train_scene(world, rnd), rnd.random() < dropout
        cells[i] = scene.cells()
        if dropped:
            prompts.append("")
            continue
        counts[i] = len(scene.placed)
        refs[i, :counts[i]] = np.stack(scene.ref_cells())
        prompts.append(scene.prompt)
    return RefBatch(cells, refs, counts, prompts)


def _seed(rnd: random.Random) -> int:
    """A noise seed outside the gate's range."""
    while True:
        s = rnd.randrange(2 ** 31)
        if not GATE_SEED0 <= s < GATE_SEED0 + GATE_SINGLE + GATE_FOUR:
            return s


def eval_cases(world: World, counts: list[tuple[int, int]], seed: int = 0) -> list[dict]:
    """Evaluation cases of held-out identities: for each (n, count), ``count`` sets of n identities
    with different patterns and no colour in common in n random slots (image j in ``slots[j]``)
    on a random background, the counterfactual subject ``b`` and its replacement ``new`` (b's
    pattern, colours no subject has), one noise seed shared by every condition."""
    cases = []
    for n, count in counts:
        if not 1 <= n <= MAX_REFS:
            raise ToyWorldError(f"expected 1-{MAX_REFS} references per case, got {n}")
        for k in range(count):
            rnd = random.Random(f"refeval/{seed}/{n}/{k}")
            subjects, b, new = draw_subjects(world.heldout, n, rnd)
            cases.append({"id": f"n{n}-{k:03d}", "n": n, "subjects": [s.name for s in subjects],
                          "slots": rnd.sample(list(world.slots), n), "background": rnd.choice(world.backgrounds),
                          "b": b, "new": new.name, "seed": _seed(rnd)})
    return cases


def gate_cases(world: World, seed: int = 0) -> list[dict]:
    """The gate's cases (held-out identities): ``GATE_SINGLE`` one-reference cases in a random slot,
    ``GATE_FOUR`` four-reference cases (different patterns, no shared colour) filling every slot in
    a random order; noise seeds GATE_SEED0 + k."""
    rnd, cases = random.Random(f"refgate/{seed}"), []
    for k in range(GATE_SINGLE + GATE_FOUR):
        kind = "single" if k < GATE_SINGLE else "four"
        idents = [rnd.choice(world.heldout)] if kind == "single" else distinct_identities(world.heldout, 4, rnd)
        cases.append({"id": f"{kind}-{k:03d}", "kind": kind, "n": len(idents),
                      "subjects": [i.name for i in idents], "slots": rnd.sample(list(world.slots), len(idents)),
                      "background": rnd.choice(world.backgrounds), "seed": GATE_SEED0 + k})
    return cases


def case_scene(case: dict, swap: bool = False) -> RefScene:
    """The scene a case prompts; with ``swap`` subject ``b`` is replaced by ``new``."""
    names = list(case["subjects"])
    if swap:
        names[case["b"]] = case["new"]
    return RefScene(tuple(Placed(Identity.parse(s), slot) for s, slot in zip(names, case["slots"])),
                    case["background"])
