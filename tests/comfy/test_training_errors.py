"""Bad training input gets a clear error (expected / got / what to do) from the node that
received it, before any training step; ComfyUI's own range checks catch the rest at validation."""

import os

import folder_paths
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_training import make_pairs

TINY = "tiny (128 wide, 2+2 blocks)"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_errors")
    (root / "empty").mkdir()
    pq.write_table(pa.table({"picture": [b"x"], "caption": ["y"]}), root / "wrong.parquet")
    make_pairs(root / "one_item", n_items=1)
    return {"pairs": make_pairs(root / "pairs"), "root": root}


@pytest.fixture(scope="module")
def run_prompt():
    """One executor for the module: unchanged nodes (the stand-in loader) come from its cache."""
    import execution

    from musar_run import runtime

    executor = execution.PromptExecutor(runtime._ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    return lambda prompt: runtime.run_prompt(prompt, executor=executor)


def graph(path, seed=0, **train):
    settings = dict(steps=2, learning_rate=1e-3, noisy_rank=2, subject_rank=8, batch_size=1,
                    grad_accumulation=1, optimizer="adamw", precision="fp32",
                    gradient_checkpointing=False, seed=0, checkpoint_every=0,
                    output_name="errors", resume="none", validation_every=0)
    settings.update(train)
    return {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": seed}},
        "2": {"class_type": "MUSAR_LoadDiptychDataset", "inputs": {
            "path": str(path), "layout": "auto", "min_quality": 5, "target_width": 128,
            "target_height": 64, "reference_size": 64, "prompt_template": "{item_a} and {item_b}",
            "prompt_dropout": 0.0, "condition_dropout": 0.0, "seed": 0}},
        "3": {"class_type": "MUSAR_TrainDualLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0], **settings}},
        "4": {"class_type": "MUSAR_SaveDualLoRA", "inputs": {"lora": ["3", 0],
                                                            "filename_prefix": "musar_test/errors"}},
    }


def expect(run_prompt, prompt, node, *words):
    result = run_prompt(prompt)
    assert not result.ok
    if result.error is None or "node_id" not in result.error:  # rejected by validation
        text = str(result.node_errors)
        assert node in result.node_errors and all(w in text for w in words), text
        return
    err = result.error
    assert err["node_id"] == node, err
    assert err["exception_type"].rsplit(".", 1)[-1] in ("DatasetError", "TrainingError", "ModelError"), err
    assert all(w in err["exception_message"] for w in words), err["exception_message"]
    assert "4" not in [d for e, d in result.messages if e == "execution_error"][0]["executed"]


@pytest.mark.parametrize("case, node, words", [
    (dict(path="empty"), "2", ("no usable rows", "Loosen the filters")),
    (dict(path="wrong.parquet"), "2", ("picture", "expected")),
    (dict(path="missing"), "2", ("does not exist",)),
    (dict(path="one_item"), "2", ("at least 2 different items",)),
    (dict(subject_rank=200), "3", ("subject_rank 200 is larger than the model width 128",)),
    (dict(batch_size=4, grad_accumulation=2), "3", ("needs 8 samples", "dataset has 4")),
    (dict(optimizer="sgd"), "3", ("optimizer", "sgd", "adamw")),
    (dict(steps=0), "3", ("steps must be an integer >= 1, got 0",)),
    (dict(output_name="../elsewhere"), "3", ("plain name",)),
])
def test_bad_training_input_is_explained(run_prompt, data, case, node, words):
    path = data["root"] / case.pop("path") if "path" in case else data["pairs"]
    expect(run_prompt, graph(path, **case), node, *words)


def test_unwritable_checkpoint_folder(run_prompt, data):
    target = os.path.join(folder_paths.get_output_directory(), "musar_training", "blocked")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        f.write("a file where the run folder should go")
    expect(run_prompt, graph(data["pairs"], output_name="blocked"), "3", "cannot write checkpoints")


def test_model_with_musar_patches_is_refused(run_prompt, data):
    prompt = graph(data["pairs"])
    prompt["8"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": 0x2040FF}}
    prompt["9"] = {"class_type": "MUSAR_Subject", "inputs": {
        "image": ["8", 0], "vae": ["1", 2], "clip": ["1", 1], "caption": "thing",
        "crop": "center crop", "reference_size": 64}}
    prompt["10"] = {"class_type": "MUSAR_ApplyRouting", "inputs": {
        "model": ["1", 0], "subjects": ["9", 0], "static_routing": True, "dynamic_routing": False,
        "start_percent": 0.0, "end_percent": 1.0, "routing_blocks": "double", "threshold": 0.0,
        "smoothing": 3, "symmetric": False, "strength": 1.0, "condition_cache": False,
        "positions": "shared"}}
    prompt["3"]["inputs"]["model"] = ["10", 0]
    expect(run_prompt, prompt, "3", "MUSAR patches", "plain FLUX")


def test_resume_from_another_model_or_other_settings(run_prompt, data):
    run_prompt(graph(data["pairs"], output_name="resumable")).raise_for_error()
    expect(run_prompt, graph(data["pairs"], seed=1, output_name="resumable", resume="latest", steps=4),
           "3", "other weights")
    expect(run_prompt, graph(data["pairs"], output_name="resumable", resume="latest", steps=4,
                             learning_rate=2e-3), "3", "learning_rate: checkpoint 0.001, now 0.002")
    run_prompt(graph(data["pairs"], output_name="resumable", resume="latest", steps=4)).raise_for_error()
