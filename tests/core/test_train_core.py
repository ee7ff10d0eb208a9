"""Tier 1: the trainer core on a tiny pure-torch stand-in with FLUX.1's module layout (no ComfyUI).

Resume is bit-identical, cancel writes the last completed step, only the LoRA changes, settings
and inputs are validated with clear MusarErrors."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402

from musar.errors import DatasetError, MusarError, TrainingError  # noqa: E402
from musar.lora import save_dual_lora  # noqa: E402
from musar.train import (  # noqa: E402
    Callbacks,
    CheckpointStore,
    LossHistory,
    TrainConfig,
    Trainer,
    read_checkpoint,
    render_loss_curve,
)
from musar.train.dataset import open_training_set  # noqa: E402
from musar.train.rng import SampleOrder  # noqa: E402

FAST = dict(learning_rate=3e-3, noisy_rank=2, subject_rank=4, pre_encode=True)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tiny.make_pair_folder(tmp_path_factory.mktemp("pairs") / "data")
    return open_training_set(root, target_width=64, target_height=32, reference_size=32, seed=3)


def _trainer(data, tmp, steps, dm=None, store=True, **kw):
    cfg = TrainConfig(steps=steps, **{**FAST, **kw})
    return Trainer(dm or tiny.TinyFlux(), data, tiny.tiny_encoders(), cfg, cache_dir=tmp / "cache",
                   store=CheckpointStore(tmp / "ckpt", "run", keep=2) if store else None)


def test_resume_continues_bit_identically(data, tmp_path):
    straight = _trainer(data, tmp_path / "a", 12, batch_size=2).run()
    first = _trainer(data, tmp_path / "b", 6, batch_size=2).run()
    assert first.step == 6 and first.checkpoint.name == "run-step000006.safetensors"
    second = _trainer(data, tmp_path / "b", 12, batch_size=2).run(resume="latest")
    assert second.step == 12
    assert second.history.raw == straight.history.raw  # exact floats
    for key, (noisy, subject) in straight.lora.modules.items():
        other = second.lora.modules[key]
        for a, b in zip((noisy, subject), other):
            assert torch.equal(a.down, b.down) and torch.equal(a.up, b.up), key
    state_a = read_checkpoint(straight.checkpoint)
    state_b = read_checkpoint(second.checkpoint)
    for index, entries in state_a.optimizer["state"].items():
        for name, value in entries.items():
            assert torch.equal(value, state_b.optimizer["state"][index][name]), (index, name)
    assert torch.equal(state_a.noise_rng, state_b.noise_rng)


def test_cancel_writes_the_last_completed_step_and_resume_matches(data, tmp_path):
    straight = _trainer(data, tmp_path / "a", 8).run()
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 5  # checked before each step: 5 steps complete

    stopped = _trainer(data, tmp_path / "b", 8).run(Callbacks(should_stop=stop))
    assert stopped.stopped and stopped.step == 5
    assert stopped.checkpoint.name == "run-step000005.safetensors"
    assert stopped.history.raw == straight.history.raw[:5]
    resumed = _trainer(data, tmp_path / "b", 8).run(resume=stopped.checkpoint)
    assert resumed.history.raw == straight.history.raw


def test_only_the_lora_changes_and_the_model_is_restored(data, tmp_path):
    dm = tiny.TinyFlux(seed=4)
    dm.requires_grad_(True)
    before = {k: v.clone() for k, v in dm.state_dict().items()}
    ids = {k: id(v) for k, v in dm.named_parameters()}
    result = _trainer(data, tmp_path, 4, dm=dm).run()
    assert all(torch.equal(before[k], v) for k, v in dm.state_dict().items())
    assert {k: id(v) for k, v in dm.named_parameters()} == ids
    assert all(p.requires_grad for p in dm.parameters())  # flags restored
    assert all(p.grad is None for p in dm.parameters())
    ups = [pair.up for pairs in result.lora.modules.values() for pair in pairs if pair is not None]
    assert any(u.abs().sum() > 0 for u in ups)  # the LoRA did move (up starts at zero)


def test_inference_mode_weights_are_trained_through_and_put_back(data, tmp_path):
    with torch.inference_mode():
        dm = tiny.TinyFlux(seed=5)  # ComfyUI builds models under inference mode
    originals = {k: v for k, v in dm.named_parameters()}
    result = _trainer(data, tmp_path, 2, dm=dm).run()
    assert result.step == 2 and all(v is originals[k] for k, v in dm.named_parameters())


def test_checkpoints_keep_the_last_k_and_leave_no_temp_files(data, tmp_path):
    _trainer(data, tmp_path, 6, checkpoint_every=2).run()
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["run-step000004.safetensors", "run-step000006.safetensors"]


def test_loss_weighting_is_independent_of_how_the_batch_is_split(data, tmp_path):
    a = _trainer(data, tmp_path / "a", 3, batch_size=2, store=False).run()
    b = _trainer(data, tmp_path / "b", 3, batch_size=1, grad_accumulation=2, store=False).run()
    for (x, y) in zip(a.history.raw, b.history.raw):
        assert x == pytest.approx(y, rel=1e-5)
    for key, pairs in a.lora.modules.items():
        for p, q in zip(pairs, b.lora.modules[key]):
            torch.testing.assert_close(p.up, q.up, rtol=1e-4, atol=1e-6)


def test_sample_order_state_round_trips_across_epochs():
    order = SampleOrder(5, seed=1)
    head = order.take(7)
    assert sorted(head[:5]) == list(range(5)) and all(5 <= i < 10 for i in head[5:])
    twin = SampleOrder(5, seed=99)
    twin.restore(order.state())
    assert twin.take(20) == order.take(20)


def test_loss_curve_renders():
    history = LossHistory(0.9, [1.0 / (i + 1) for i in range(50)])
    assert history.smoothed()[0] == 1.0 and history.smoothed()[-1] < 0.2
    image = render_loss_curve(history, 320, 160)
    assert image.size == (320, 160)
    assert render_loss_curve(LossHistory()).size == (640, 320)


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, words", [
    (dict(optimizer="sgd"), "expected one of 'adamw', 'prodigy'"),
    (dict(steps=0), "steps: expected a whole number from 1 to 1000000, got 0"),
    (dict(noisy_rank=0, subject_rank=0), "nothing would be trained"),
    (dict(precision="fp8"), "expected one of 'fp32', 'bf16'"),
    (dict(learning_rate=0.0), r"learning_rate: expected a number from 1e-07 to 10\.0, got 0\.0"),
    (dict(batch_size=True), "batch_size: expected a whole number from 1 to 1024, got True"),
])
def test_bad_settings_are_training_errors(settings, words):
    with pytest.raises(TrainingError, match=words):
        TrainConfig(**settings)


def test_unknown_setting_lists_the_valid_ones():
    with pytest.raises(TrainingError, match="expected some of .*'learning_rate'"):
        TrainConfig.from_mapping({"lr": 1e-4})


def test_prodigy_without_the_package_says_how_to_get_it():
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        with pytest.raises(TrainingError, match="pip install prodigyopt"):
            TrainConfig(optimizer="prodigy")
    else:
        assert TrainConfig(optimizer="prodigy", learning_rate=1.0).optimizer == "prodigy"


def test_empty_dataset_folder_is_a_dataset_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable rows"):
        open_training_set(tmp_path / "empty")


def test_batch_larger_than_the_dataset(data, tmp_path):
    with pytest.raises(TrainingError, match="one step needs 8 samples .* dataset has 4"):
        _trainer(data, tmp_path, 2, batch_size=4, grad_accumulation=2)


def test_rank_larger_than_the_model_width(data, tmp_path):
    with pytest.raises(TrainingError, match="subject_rank 64 is larger than the model width 32"):
        _trainer(data, tmp_path, 2, subject_rank=64)


def test_model_with_musar_wrappers_is_refused(data, tmp_path):
    dm = tiny.TinyFlux()
    dm.double_blocks[0].img_attn.qkv._musar_branches = ("x",)
    with pytest.raises(TrainingError, match="MUSAR patches applied"):
        _trainer(data, tmp_path, 2, dm=dm)


def test_unwritable_checkpoint_folder(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot write checkpoints to"):
        CheckpointStore(tmp_path / "file" / "ckpt", "run")
    with pytest.raises(TrainingError, match="plain file name"):
        CheckpointStore(tmp_path, "../up")


def test_resume_from_another_model_or_config_or_file(data, tmp_path):
    done = _trainer(data, tmp_path, 2).run()
    with pytest.raises(TrainingError, match="another model .*hidden 32.* hidden 48"):
        _trainer(data, tmp_path, 4, dm=tiny.TinyFlux(hidden=48, heads=2)).run(resume=done.checkpoint)
    with pytest.raises(TrainingError, match="other weights"):
        _trainer(data, tmp_path, 4, dm=tiny.TinyFlux(seed=9)).run(resume=done.checkpoint)
    with pytest.raises(TrainingError, match="learning_rate: checkpoint 0.003, now 0.001"):
        _trainer(data, tmp_path, 4, learning_rate=1e-3).run(resume=done.checkpoint)
    lora_file = tmp_path / "lora.safetensors"
    save_dual_lora(lora_file, done.lora)
    with pytest.raises(TrainingError, match="not a MUSAR training checkpoint"):
        _trainer(data, tmp_path, 4).run(resume=lora_file)
    with pytest.raises(TrainingError, match="does not exist"):
        _trainer(data, tmp_path, 4).run(resume=tmp_path / "missing.safetensors")


def test_every_training_error_is_a_musar_error():
    assert issubclass(TrainingError, MusarError) and issubclass(DatasetError, MusarError)


def test_samples_without_conditions_or_prompt_train(tmp_path):
    root = tiny.make_pair_folder(tmp_path / "data")
    dropped = open_training_set(root, target_width=64, target_height=32, reference_size=32, seed=3,
                                prompt_dropout=1.0, condition_dropout=1.0)
    result = _trainer(dropped, tmp_path, 2, store=False).run()
    assert result.step == 2 and all(v > 0 for v in result.history.raw)


def test_mixed_layouts_in_one_batch_weigh_every_sample_the_same(tmp_path):
    root = tiny.make_pair_folder(tmp_path / "data")
    mixed = open_training_set(root, target_width=64, target_height=32, reference_size=32, seed=3, condition_dropout=0.5)
    a = _trainer(mixed, tmp_path / "a", 3, batch_size=4, store=False).run()
    b = _trainer(mixed, tmp_path / "b", 3, batch_size=1, grad_accumulation=4, store=False).run()
    assert a.history.raw == pytest.approx(b.history.raw, rel=1e-5)


def test_a_second_run_reads_every_encoding_from_the_cache(data, tmp_path):
    _trainer(data, tmp_path, 3, store=False).run()
    again = _trainer(data, tmp_path, 3, store=False)
    again.run()
    stats = again.encoder.stats()
    assert all(s["misses"] == 0 and s["hits"] > 0 for s in stats.values()), stats
