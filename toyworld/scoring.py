"""Scoring detections against the subjects a prompt asked for (multi-subject fidelity metrics).

Definitions (E = expected subjects, D = detections, both lists; a subject is (shape, colour, pattern)):

- match: each expected subject, in order, takes an unused detection with exactly its shape, colour
  and pattern (the most confident one). ``present[i]`` says whether subject i got one.
- ``all_present``: every expected subject is present.
- unmatched detections U: detections no expected subject took.
- ``entangled_subjects[i]``: subject e = E[i] is not present, and some d in U has e's shape but a
  colour or a pattern that differs from e's and belongs to another expected subject
  (d.colour != e.colour and d.colour in {o.colour : o in E, o != E[i]}, or the same with pattern).
  This is attribute leakage: "red star and blue circle" rendered as a blue star.
  ``entangled`` = any subject is entangled.
- ``mixed``: number of detections whose subject-coloured pixels hold at least ``mix_threshold``
  (default 15 %) each of two different expected colours (two subjects fused into one blob).
- ``collapsed``: fewer detections than expected subjects (len(D) < len(E): a subject vanished or two
  merged into one component), or ``mixed`` > 0.
- ``extra``: len(U), detections that are not an exact match (this includes the detections that
  make a subject entangled, wrong subjects, and duplicates).
- ``exact``: all_present and extra == 0 (the image shows exactly the expected subjects).
"""

from .errors import ToyWorldError
from .world import Subject


def _as_subject(s) -> Subject:
    if isinstance(s, Subject):
        return s
    if isinstance(s, str):
        return Subject.parse(s)
    if isinstance(s, (tuple, list)) and len(s) == 3:
        return Subject(*s)
    raise ToyWorldError(f"expected a Subject, '<colour> <pattern> <shape>' or (shape, colour, pattern), got {s!r}")


def _match(detections, expected):
    used, match = set(), []
    for e in expected:
        cands = [j for j, d in enumerate(detections)
                 if j not in used and (d.shape, d.colour, d.pattern) == (e.shape, e.colour, e.pattern)]
        j = max(cands, key=lambda k: detections[k].confidence) if cands else None
        if j is not None:
            used.add(j)
        match.append(j)
    return match, used


def _leaks(d, e, others) -> bool:
    return d.shape == e.shape and (
        (d.colour != e.colour and d.colour in {o.colour for o in others})
        or (d.pattern != e.pattern and d.pattern in {o.pattern for o in others}))


def score(detections, expected_subjects, mix_threshold: float = 0.15) -> dict:
    """Score ``detections`` (Detector output) against ``expected_subjects`` (see module docstring)."""
    expected = [_as_subject(s) for s in expected_subjects]
    detections = list(detections)
    match, used = _match(detections, expected)
    unmatched = [d for j, d in enumerate(detections) if j not in used]
    present = [j is not None for j in match]
    entangled = []
    for i, e in enumerate(expected):
        others = expected[:i] + expected[i + 1:]
        entangled.append(not present[i] and any(_leaks(d, e, others) for d in unmatched))
    colours = {e.colour for e in expected}
    mixed = sum(1 for d in detections
                if sum(1 for c, f in d.colour_fractions if c in colours and f >= mix_threshold) >= 2)
    collapsed = len(detections) < len(expected) or mixed > 0
    return {
        "all_present": all(present), "present": present,
        "entangled": any(entangled), "entangled_subjects": entangled,
        "collapsed": collapsed, "mixed": mixed, "extra": len(unmatched),
        "exact": all(present) and not unmatched,
        "n_expected": len(expected), "n_detected": len(detections),
        "subjects": [{"subject": e.item, "present": p, "entangled": t, "detection": j}
                     for e, p, t, j in zip(expected, present, entangled, match, strict=True)],
    }


def aggregate(scores) -> dict:
    """Rates over many ``score`` results: all_present / exact / entangled / collapsed rates, the
    fraction of expected subjects present, and the mean number of extra detections."""
    scores = list(scores)
    if not scores:
        raise ToyWorldError("aggregate needs at least one score, got none")
    n = len(scores)
    subjects = sum(s["n_expected"] for s in scores)
    return {
        "n_images": n,
        "all_present_rate": sum(s["all_present"] for s in scores) / n,
        "exact_rate": sum(s["exact"] for s in scores) / n,
        "subject_present_rate": sum(sum(s["present"]) for s in scores) / max(1, subjects),
        "entangled_rate": sum(s["entangled"] for s in scores) / n,
        "collapsed_rate": sum(s["collapsed"] for s in scores) / n,
        "mean_extra": sum(s["extra"] for s in scores) / n,
    }
