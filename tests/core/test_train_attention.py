"""Tier 1: the training attention plan (TrainConfig.attention). "static" (the default) trains with
the paper's static routing mask, exactly as before the setting existed; "dense" trains with full
joint attention - the fair no-routing baseline a routing evaluation compares against."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402

from musar.errors import TrainingError  # noqa: E402
from musar.routes import RoutePlan  # noqa: E402
from musar.train import CheckpointStore, TrainConfig, Trainer, flow  # noqa: E402
from musar.train.config import trajectory_differences  # noqa: E402
from musar.train.dataset import open_training_set  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
FAST = dict(steps=3, learning_rate=3e-3, noisy_rank=2, subject_rank=4, batch_size=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tiny.make_pair_folder(tmp_path_factory.mktemp("pairs") / "data")
    return open_training_set(root, target_width=64, target_height=32, reference_size=32, seed=3)


def _run(data, tmp, monkeypatch, **kw):
    """A short run; returns (result, the plans every training forward received)."""
    plans, forward = [], flow.musar_forward

    def recording(dm, inp, layout, plan=None, **options):
        plans.append(plan)
        return forward(dm, inp, layout, plan, **options)

    monkeypatch.setattr(flow, "musar_forward", recording)
    cfg = TrainConfig(**{**FAST, **kw})
    trainer = Trainer(tiny.TinyFlux(), data, tiny.tiny_encoders(), cfg, cache_dir=tmp / "cache",
                      store=CheckpointStore(tmp / "ckpt", "run", keep=1))
    return trainer.run(), plans


def test_default_training_uses_the_static_routing_mask_as_before(data, tmp_path, monkeypatch):
    assert TrainConfig().attention == "static"
    default, plans = _run(data, tmp_path / "a", monkeypatch)
    assert plans and all(p == RoutePlan(static=True) for p in plans)  # the plan trained before
    explicit, _ = _run(data, tmp_path / "b", monkeypatch, attention="static")
    assert default.history.raw == explicit.history.raw


def test_dense_training_attends_densely_and_learns_something_else(data, tmp_path, monkeypatch):
    static, _ = _run(data, tmp_path / "a", monkeypatch)
    dense, plans = _run(data, tmp_path / "b", monkeypatch, attention="dense")
    assert plans and all(p.is_dense for p in plans)
    assert dense.history.raw[0] != static.history.raw[0]  # same first batch, other attention
    changed = [not torch.equal(a.up, b.up) for key, branches in static.lora.modules.items()
               for a, b in zip(branches, dense.lora.modules[key])]
    assert any(changed)


def test_attention_is_a_trajectory_setting_and_older_checkpoints_resume():
    saved = TrainConfig().to_dict()
    assert trajectory_differences(saved, TrainConfig(attention="dense"), 1, 1) == [
        "attention: checkpoint 'static', now 'dense'"]
    older = {k: v for k, v in saved.items() if k != "attention"}  # written before the setting
    assert trajectory_differences(older, TrainConfig(), 1, 1) == []
    assert trajectory_differences(older, TrainConfig(attention="dense"), 1, 1)


def test_unknown_attention_plan_lists_the_valid_ones():
    with pytest.raises(TrainingError, match="expected one of 'static', 'dense'"):
        TrainConfig(attention="routed")
