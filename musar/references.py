"""Routed references: the labels MUSAR Route References attaches to a MODEL, and what one
sampling run routes (every condition's name, colour and region), checked against the
references the sampler's conditioning actually holds.

A reference is what ComfyUI's ``ReferenceLatent`` node put into the conditioning (FLUX.1
Kontext, FLUX.2 [dev]). Its tokens are ComfyUI's own (appended after the canvas by the model);
routing only decides which tokens see them. Labels are optional: a reference without one is
named "reference <n>" and takes the palette colour of its route index.
"""

from __future__ import annotations

import dataclasses

from .errors import LayoutError
from .layout import MAX_REFERENCES, check_reference_count
from .regions import Region, RegionMap, region_map
from .subjects import PALETTE


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceLabel:
    reference: int  # 1-based: the n-th ReferenceLatent of the conditioning
    caption: str = ""
    color: tuple[float, float, float] | None = None  # RGB 0..1; None = palette colour
    region: Region | None = None
    strength: float = 1.0  # how much the image may attend to it (musar.routes: plan weights)

    def __post_init__(self):
        if not 1 <= self.reference <= MAX_REFERENCES:
            raise LayoutError(f"reference: expected 1 to {MAX_REFERENCES}, got {self.reference}")
        if not 0.0 <= self.strength <= 1.0:
            raise LayoutError(f"strength: expected 0 to 1, got {self.strength}")

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceLabels:
    """A chain of labels (MUSAR Reference Label nodes), at most one per reference."""

    labels: tuple[ReferenceLabel, ...] = ()

    def add(self, label: ReferenceLabel) -> ReferenceLabels:
        if self.get(label.reference - 1) is not None:
            raise LayoutError(f"reference {label.reference} is labelled twice in this chain: give "
                              "each MUSAR Reference Label its own reference number")
        return ReferenceLabels(self.labels + (label,))

    def get(self, j: int) -> ReferenceLabel | None:
        """The label of reference j (0-based), or None."""
        return next((lab for lab in self.labels if lab.reference == j + 1), None)

    @property
    def has_hard_region(self) -> bool:
        return any(lab.region is not None and lab.region.mode == "hard" for lab in self.labels)

    def __deepcopy__(self, memo):
        return self


@dataclasses.dataclass(frozen=True, eq=False)
class Conditions:
    """What one sampling run routes, in route order (subjects, then references)."""

    captions: tuple[str, ...]
    colors: tuple[tuple[float, float, float], ...]
    regions: RegionMap | None = None
    n_references: int = 0
    weights: tuple[float, ...] = ()  # per condition: the image's attention weight on it (1 = as is)


def reference_count(per_cond: list[int], labels: ReferenceLabels) -> int:
    """The references routed in a run: the most any conditioning entry holds. Refuses a run
    without references, with more than fit, or with labels naming references that are not
    there."""
    n = max(per_cond, default=0)
    if n == 0:
        raise LayoutError("MUSAR Route References: the conditioning given to the sampler holds no "
                          "reference latents: chain a ReferenceLatent node per reference image "
                          "(VAE Encode -> ReferenceLatent) into the positive conditioning")
    check_reference_count(n)
    beyond = sorted(lab.reference for lab in labels.labels if lab.reference > n)
    if beyond:
        raise LayoutError(f"MUSAR Reference Label names reference {beyond[0]} but the "
                          f"conditioning holds {n} reference{'s' if n > 1 else ''}: number labels "
                          "1 to the count of ReferenceLatent nodes (in chain order)")
    return n


TIMESTEP_ZERO = "index_timestep_zero"  # ComfyUI's method that modulates references at t = 0


def check_subject_methods(methods: set[str], what: str = "MUSAR subjects") -> None:
    """MUSAR subjects run FLUX.1's blocks with their own per-segment modulation, which cannot
    be combined with ComfyUI's own timestep-zero references (set by the reference method
    ``index_timestep_zero`` or by core's FluxKVCache node); ComfyUI's FLUX.1 forward does not run
    that method either."""
    if TIMESTEP_ZERO in methods:
        raise LayoutError(f"{what} cannot be combined with the reference method "
                          f"'{TIMESTEP_ZERO}' (set by 'Edit Model Reference Method' or by the "
                          "Flux KV Cache node): use the method 'index' or 'offset' and no Flux KV "
                          "Cache with MUSAR Apply Routing or isolated FLUX.1 references (MUSAR "
                          "Route References without isolate can route timestep-zero references)")


def check_cache_methods(methods: set) -> None:
    """The reference cache is exact only for references modulated at a fixed timestep: on FLUX.2
    and Qwen-Image that is ComfyUI's ``index_timestep_zero`` (on FLUX.1 the pack modulates
    isolated references itself and this is not asked)."""
    other = sorted(str(m) for m in methods if m != TIMESTEP_ZERO)
    if other:
        raise LayoutError(f"condition_cache on MUSAR Route References needs the references "
                          f"modulated at a fixed timestep, but they use the reference method "
                          f"{other[0]!r}, which modulates them with the sampling timestep, so "
                          f"their keys change every step: set 'Edit Model Reference Method' to "
                          f"'{TIMESTEP_ZERO}' (FLUX.2 [klein], Qwen-Image-Edit-2511; on ComfyUI "
                          "versions that have it), or turn condition_cache off (isolate alone "
                          "still runs)")


def run_conditions(subjects, labels: ReferenceLabels | None, n_references: int,
                   grid: tuple[int, int]) -> Conditions:
    """Names, colours and regions (on the canvas ``grid``) of a run's conditions. ``subjects``
    are the MUSAR subjects (caption, region); ``labels`` None means references are not routed."""
    captions, colors, regions, names, weights = [], [], [], [], []
    for i, s in enumerate(subjects):
        weights.append(1.0)
        captions.append(s.caption)
        colors.append(PALETTE[i % len(PALETTE)])
        regions.append(getattr(s, "region", None))
        names.append(f"subject {i + 1} ('{s.caption}')")
    for j in range(n_references if labels is not None else 0):
        label = labels.get(j)
        index = len(subjects) + j
        caption = label.caption if label is not None and label.caption else f"reference {j + 1}"
        captions.append(caption)
        colors.append(label.color if label is not None and label.color else PALETTE[index % len(PALETTE)])
        regions.append(None if label is None else label.region)
        weights.append(1.0 if label is None else label.strength)
        names.append(f"reference {j + 1}" + (f" ('{label.caption}')" if label and label.caption else ""))
    weights = tuple(weights) if any(w != 1.0 for w in weights) else ()
    return Conditions(tuple(captions), tuple(colors), region_map(regions, names, grid),
                      n_references if labels is not None else 0, weights)
