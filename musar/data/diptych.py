"""Debiased diptych learning: two-subject training samples built from single-subject pairs.

``DiptychBuilder.sample(index)`` (docs/METHOD.md, "Debiased diptych learning"):
1. pick two rows A, B with different items (uniform over rows; items compared after
   ``strip().casefold()``);
2. for each, a seeded coin picks which panel is the condition; the other panel is its half of
   the target;
3. target = the two target panels side by side (each centre-cropped and resized to
   H x W/2), left/right order seeded; conditions = [cond_A, cond_B] centre-cropped and resized
   to reference_size^2; captions = [item_A, item_B]; prompt = the template filled from the two
   target panels' descriptions;
4. prompt dropout -> prompt ""; cond dropout -> that condition and its caption are removed
   (the target still shows both subjects; with both dropped the sample has no condition).

Every choice comes from a random.Random seeded with sha256(seed, index): a sample depends on
(seed, index) and the data only, never on call order. Broken rows met while picking are
counted in the dataset's report and replaced by further seeded draws.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import random
import string
from dataclasses import dataclass

from PIL import Image

from ..errors import DatasetError
from .datasets import MultiSubjectDataset, PairDataset
from .images import fit
from .records import MultiSubjectSample, SubjectPair

logger = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = ("An undivided, seamless, and harmonious picture with two objects. "
                           "{desc_a} {desc_b}")
PLACEHOLDERS = ("desc_a", "desc_b", "item_a", "item_b", "category_a", "category_b",
                "desc_left", "desc_right", "item_left", "item_right")
MAX_DRAWS = 32  # seeded rejection draws before a deterministic scan takes over


def sample_rng(seed: int, index: int, purpose: str) -> random.Random:
    """A generator for one (seed, index) pair, independent of any other call."""
    try:
        index = operator.index(index)  # ints and numpy integers
    except TypeError:
        raise DatasetError(f"sample index must be an int >= 0, got {index!r}") from None
    if index < 0:
        raise DatasetError(f"sample index must be an int >= 0, got {index!r}")
    digest = hashlib.sha256(f"musar/{purpose}/{int(seed)}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _check_settings(target_size, reference_size, prompt_dropout, condition_dropout) -> None:
    if target_size is not None:
        ok = (isinstance(target_size, (tuple, list)) and len(target_size) == 2
              and all(isinstance(v, int) and v > 0 for v in target_size))
        if not ok:
            raise DatasetError(f"target_size should be (height, width) positive ints, "
                               f"got {target_size!r}")
    if not isinstance(reference_size, int) or reference_size <= 0:
        raise DatasetError(f"reference_size should be a positive int, got {reference_size!r}")
    for name, p in (("prompt_dropout", prompt_dropout), ("condition_dropout", condition_dropout)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise DatasetError(f"{name} should be a probability in [0, 1], got {p!r}")


def check_template(template: str) -> None:
    """A prompt template: plain ``{placeholder}`` fields only (no format spec, conversion,
    attribute or index), every name one of PLACEHOLDERS; DatasetError otherwise."""
    if not isinstance(template, str):
        raise DatasetError(f"prompt_template should be a string, got {type(template).__name__}")
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as exc:
        raise DatasetError(f"prompt_template {template!r} is not a valid format string ({exc}); "
                           "write placeholders as {desc_a} and a literal brace as {{ or }}") from None
    for name, spec, conv in fields:
        if spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise DatasetError(f"prompt_template placeholder {shown} has a conversion or format "
                               f"spec; expected a plain placeholder such as {{{name}}} (the values "
                               "are text)")
    unknown = sorted({n for n, _, _ in fields} - set(PLACEHOLDERS))
    if unknown:
        raise DatasetError(f"prompt_template uses unknown placeholder(s) {unknown}: "
                           f"expected some of {list(PLACEHOLDERS)}")


def _normal(item: str) -> str:
    return item.strip().casefold()


def _compose(halves: tuple[Image.Image, Image.Image], height: int, width: int) -> Image.Image:
    half = width // 2
    target = Image.new("RGB", (width, height))
    target.paste(fit(halves[0], height, half), (0, 0))
    target.paste(fit(halves[1], height, width - half), (half, 0))
    return target


@dataclass(frozen=True)
class DiptychPlan:
    """The seeded choices behind one diptych sample (what ``sample`` renders)."""

    keys: tuple[str, str]          # row keys of A and B
    items: tuple[str, str]         # item_A, item_B
    cond_panels: tuple[int, int]   # which panel (0/1) of A and of B is the condition
    a_left: bool                   # A's target panel is the left half
    drop_prompt: bool
    keep_conds: tuple[bool, bool]  # condition A / B survive cond dropout


class DiptychBuilder:
    """Two-subject samples from a PairDataset; see the module doc."""

    def __init__(self, pairs: PairDataset, seed: int, target_size=(512, 1024), reference_size=512,
                 prompt_template: str = DEFAULT_PROMPT_TEMPLATE, prompt_dropout: float = 0.0,
                 condition_dropout: float = 0.0):
        if not isinstance(pairs, PairDataset):
            raise DatasetError(f"DiptychBuilder needs single-subject pairs (a PairDataset), got "
                               f"{type(pairs).__name__}; use MultiSubjectSource for samples")
        _check_settings(target_size, reference_size, prompt_dropout, condition_dropout)
        if target_size[1] < 2:
            raise DatasetError(f"target_size width must be >= 2, got {target_size!r}")
        check_template(prompt_template)
        self.pairs, self.seed = pairs, int(seed)
        self.target_size, self.reference_size = tuple(target_size), reference_size
        self.prompt_template = prompt_template
        self.prompt_dropout, self.condition_dropout = float(prompt_dropout), float(condition_dropout)
        self._items = [_normal(item) for item in pairs.items]
        distinct = set(self._items)
        if len(distinct) < 2:
            raise DatasetError(f"diptych learning needs at least 2 different items, but "
                               f"'{pairs.report.source}' has {len(distinct)} "
                               f"({sorted(distinct)[:3]}) among {len(pairs)} usable rows")

    def __len__(self) -> int:
        """Nominal epoch length (one draw per usable row); any index >= 0 is valid."""
        return len(self.pairs)

    def plan(self, index: int) -> DiptychPlan:
        return self._plan(index)[0]

    def sample(self, index: int) -> MultiSubjectSample:
        plan, (pair_a, pair_b) = self._plan(index)
        h, w = self.target_size
        tgt = (pair_a.panels[1 - plan.cond_panels[0]], pair_b.panels[1 - plan.cond_panels[1]])
        target = _compose(tgt if plan.a_left else tgt[::-1], h, w)
        conds = (pair_a.panels[plan.cond_panels[0]], pair_b.panels[plan.cond_panels[1]])
        kept = [(fit(c, self.reference_size, self.reference_size), item)
                for c, item, keep in zip(conds, plan.items, plan.keep_conds, strict=True) if keep]
        prompt = "" if plan.drop_prompt else self._prompt(plan, pair_a, pair_b)
        return MultiSubjectSample(cond_images=tuple(c for c, _ in kept),
                                  cond_captions=tuple(i for _, i in kept), target=target,
                                  prompt=prompt,
                                  key=f"diptych:{self.seed}:{index}:{plan.keys[0]}+{plan.keys[1]}")

    def _prompt(self, plan: DiptychPlan, a: SubjectPair, b: SubjectPair) -> str:
        desc_a = a.descriptions[1 - plan.cond_panels[0]]
        desc_b = b.descriptions[1 - plan.cond_panels[1]]
        left, right = ((desc_a, a.item), (desc_b, b.item))[:: 1 if plan.a_left else -1]
        text = self.prompt_template.format(
            desc_a=desc_a, desc_b=desc_b, item_a=a.item, item_b=b.item, category_a=a.category,
            category_b=b.category, desc_left=left[0], desc_right=right[0], item_left=left[1],
            item_right=right[1])
        return " ".join(text.split())

    def _plan(self, index: int) -> tuple[DiptychPlan, tuple[SubjectPair, SubjectPair]]:
        rng = sample_rng(self.seed, index, "diptych")
        row_a, pair_a = self._draw(rng, exclude=None)
        row_b, pair_b = self._draw(rng, exclude=self._items[row_a])
        cond_panels = (rng.randrange(2), rng.randrange(2))
        a_left = rng.random() < 0.5
        drop_prompt = rng.random() < self.prompt_dropout
        keep_conds = (rng.random() >= self.condition_dropout, rng.random() >= self.condition_dropout)
        plan = DiptychPlan(keys=(pair_a.key, pair_b.key), items=(pair_a.item, pair_b.item),
                           cond_panels=cond_panels, a_left=a_left, drop_prompt=drop_prompt,
                           keep_conds=keep_conds)
        return plan, (pair_a, pair_b)

    def _draw(self, rng: random.Random, exclude: str | None) -> tuple[int, SubjectPair]:
        """A usable row (and its pair) whose item is not ``exclude``; seeded, data-determined."""
        n = len(self.pairs)
        for _ in range(MAX_DRAWS):
            row = rng.randrange(n)
            if self._items[row] != exclude and (pair := self.pairs.load(row)) is not None:
                return row, pair
        start = rng.randrange(n)
        for step in range(n):
            row = (start + step) % n
            if self._items[row] != exclude and (pair := self.pairs.load(row)) is not None:
                return row, pair
        raise DatasetError(f"no usable row with an item other than {exclude!r} is left in "
                           f"'{self.pairs.report.source}': every other row is broken.\n"
                           f"{self.pairs.report.summary()}")


class MultiSubjectSource:
    """Serves ready multi-subject samples through the same ``sample(index)`` interface.

    index wraps around the dataset (index % len); conditions are centre-cropped and resized to
    reference_size^2, the target to target_size (None keeps its size); dropout as DiptychBuilder.
    """

    def __init__(self, dataset: MultiSubjectDataset, seed: int, target_size=(512, 1024),
                 reference_size: int = 512, prompt_dropout: float = 0.0, condition_dropout: float = 0.0):
        if not isinstance(dataset, MultiSubjectDataset):
            raise DatasetError(f"MultiSubjectSource needs a MultiSubjectDataset, got "
                               f"{type(dataset).__name__}; use DiptychBuilder for pairs")
        _check_settings(target_size, reference_size, prompt_dropout, condition_dropout)
        self.dataset, self.seed = dataset, int(seed)
        self.target_size = tuple(target_size) if target_size is not None else None
        self.reference_size = reference_size
        self.prompt_dropout, self.condition_dropout = float(prompt_dropout), float(condition_dropout)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> MultiSubjectSample:
        rng = sample_rng(self.seed, index, "multi")
        row = self.dataset[index % len(self.dataset)]
        drop_prompt = rng.random() < self.prompt_dropout
        keeps = [rng.random() >= self.condition_dropout for _ in row.cond_images]
        target = row.target.copy() if self.target_size is None \
            else fit(row.target, *self.target_size)
        kept = [(fit(c, self.reference_size, self.reference_size), cap)
                for c, cap, keep in zip(row.cond_images, row.cond_captions, keeps, strict=True)
                if keep]
        return MultiSubjectSample(cond_images=tuple(c for c, _ in kept),
                                  cond_captions=tuple(cap for _, cap in kept), target=target,
                                  prompt="" if drop_prompt else row.prompt, key=row.key)


def build_source(dataset: PairDataset | MultiSubjectDataset, seed: int,
                 **settings) -> DiptychBuilder | MultiSubjectSource:
    """DiptychBuilder for pairs, MultiSubjectSource for ready samples (same ``settings``)."""
    if isinstance(dataset, PairDataset):
        return DiptychBuilder(dataset, seed, **settings)
    if "prompt_template" in settings:
        raise DatasetError("prompt_template only applies to single-subject pairs (diptychs); "
                           "multi-subject samples keep their own prompt - remove the setting")
    return MultiSubjectSource(dataset, seed, **settings)
