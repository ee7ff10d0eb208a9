"""What a routed MODEL carries, and the rules for a second routing node on it (MUSAR Apply
Routing and MUSAR Route References share one attachment), without ComfyUI."""

import pytest
import torch
from tiny import attachment as make_attachment

from musar import attachment, planning
from musar.errors import RoutingError
from musar.references import ReferenceLabel, ReferenceLabels
from musar.regions import Region
from musar.settings import RoutingSettings
from musar.subjects import Subject, SubjectSet


def _schedule(**kw):
    return planning.resolve(RoutingSettings(**kw), lambda p: 1.0 - p, 2, 2)


def _subjects(n=2, region=None):
    out = SubjectSet()
    for i in range(n):
        out = out.add(Subject(torch.zeros(1, 16, 4, 4), f"s{i + 1}", torch.zeros(1, 3, 16),
                              region=region if i == 0 else None))
    return out


def test_the_first_routing_node_takes_its_own_settings():
    settings = RoutingSettings(smoothing=5)
    subjects, references, joined = attachment.join(None, settings, subjects=_subjects())
    assert len(subjects) == 2 and references is None and joined is settings
    subjects, references, joined = attachment.join(None, settings, references=ReferenceLabels())
    assert len(subjects) == 0 and references is not None


def test_subjects_join_references_under_the_later_settings_keeping_prompt_blocking():
    refs = make_attachment(_schedule(block_prompt_references=True), references=ReferenceLabels())
    subjects, references, joined = attachment.join(refs, RoutingSettings(smoothing=7), subjects=_subjects())
    assert references is refs.references and joined.smoothing == 7 and joined.block_prompt_references


def test_references_join_subjects_keeping_their_positions():
    subj = make_attachment(_schedule(positions="distinct"), (3, 3), (4, 4))
    subjects, references, joined = attachment.join(subj, RoutingSettings(), references=ReferenceLabels())
    assert subjects is subj.subjects and joined.positions == "distinct"


@pytest.mark.parametrize("first,second,match", [
    ("subjects", "subjects", "chain every MUSAR Subject into one Apply Routing"),
    ("references", "references", "use one per MODEL"),
    ("references+cache", "subjects", "condition_cache cannot cache MUSAR subjects and routed"),
    ("subjects+cache", "references", "condition_cache cannot cache MUSAR subjects and routed"),
])
def test_conflicting_second_nodes_are_refused(first, second, match):
    cache = first.endswith("+cache")
    if first.startswith("subjects"):
        previous = make_attachment(_schedule(condition_cache=cache), (3,), (4,))
    else:
        previous = make_attachment(_schedule(), references=ReferenceLabels())
    settings = RoutingSettings(condition_cache=first == "references+cache")
    kw = {"subjects": _subjects()} if second == "subjects" else {"references": ReferenceLabels()}
    with pytest.raises(RoutingError, match=match):
        attachment.join(previous, settings, **kw)


def test_soft_regions_need_dynamic_routing():
    soft = Region(torch.ones(32, 32), "soft")
    with pytest.raises(RoutingError, match="soft MUSAR Layout Region"):
        attachment.check_regions(_subjects(region=soft), None, RoutingSettings(dynamic_routing=False))
    labels = ReferenceLabels().add(ReferenceLabel(1, region=soft))
    with pytest.raises(RoutingError, match="turn dynamic_routing on"):
        attachment.check_regions(SubjectSet(), labels, RoutingSettings(dynamic_routing=False))
    attachment.check_regions(_subjects(region=soft), labels, RoutingSettings())  # dynamic on: fine
    hard = Region(torch.ones(32, 32), "hard")
    attachment.check_regions(_subjects(region=hard), None, RoutingSettings(dynamic_routing=False))


def test_the_attachment_knows_its_segments_and_ids():
    att = make_attachment(_schedule(), (2, 5), (4, 2))
    assert att.caption_lens == (2, 5) and att.image_lens == (4, 2)
    assert att.ids.shape == (6, 3) and att.has_subjects and att.active and not att.routes_references


def test_isolation_and_the_reference_cache_rules():
    refs = ReferenceLabels()
    with pytest.raises(RoutingError, match="exact only for isolated references"):
        attachment.check_isolation(SubjectSet(), refs, RoutingSettings(condition_cache=True), True)
    with pytest.raises(RoutingError, match="set strength to 1 or turn isolate off"):
        attachment.check_isolation(SubjectSet(), refs, RoutingSettings(isolate=True, strength=0.5), True)
    isolated = RoutingSettings(isolate=True, condition_cache=True)
    assert attachment.check_isolation(SubjectSet(), refs, isolated, True)  # FLUX.1: the pack modulates
    assert not attachment.check_isolation(SubjectSet(), refs, isolated, False)  # core's timestep zero
    assert not attachment.check_isolation(_subjects(), None, isolated, True)  # subjects: always
    with pytest.raises(RoutingError, match="turn symmetric or isolate off"):
        RoutingSettings(isolate=True, symmetric=True)
