"""Bad training input gets a clear error (expected / got / what to do) from the node that
received it, before any training step; ComfyUI's own range checks catch the rest at validation."""

import inspect
import os
from pathlib import Path

import folder_paths
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from musar_helpers import make_pairs
from test_training import dataset_folder

TINY = "tiny (128 wide, 2+2 blocks)"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data():
    root = dataset_folder("train_errors")
    (root / "empty").mkdir()
    pq.write_table(pa.table({"picture": [b"x"], "caption": ["y"]}), root / "wrong.parquet")
    make_pairs(root / "one_item", n_items=1)
    return {"pairs": make_pairs(root / "pairs"), "root": root}


@pytest.fixture(scope="module")
def run_prompt():
    """One executor for the module: unchanged nodes (the stand-in loader) come from its cache."""
    from musar_run import runtime

    executor = runtime.new_executor()
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
    (dict(steps=0), "3", ("steps", "smaller than min of 1")),  # left to ComfyUI's own range check
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


# ---- every widget input fed from a core primitive node (a linked input) ----------------------
PRIMITIVE = {bool: "PrimitiveBoolean", int: "PrimitiveInt", float: "PrimitiveFloat", str: "PrimitiveString"}
COMBOS = {("2", "layout"), ("3", "optimizer"), ("3", "precision"), ("3", "resume")}


def linked(prompt, node, name, value):
    """Feed ``node.name`` from a core primitive node holding ``value`` (no literal any more)."""
    key = f"p_{node}_{name}"
    prompt[key] = {"class_type": PRIMITIVE[type(value)], "inputs": {"value": value}}
    prompt[node]["inputs"][name] = [key, 0]
    return prompt


def widgets(prompt):
    return [(node, name, value) for node in ("2", "3", "4")
            for name, value in prompt[node]["inputs"].items()
            if not isinstance(value, list) and (node, name) not in COMBOS]


def test_every_widget_fed_from_a_primitive_node_trains_exactly_like_literals(run_prompt, data):
    literal = graph(data["pairs"], output_name="literal_widgets")
    primitive = graph(data["pairs"], output_name="linked_widgets")
    for node, name, value in widgets(primitive):
        linked(primitive, node, name, value)
    # 9 dataset + 11 training + 1 save widgets (the 4 combos take literals only, see below)
    assert len(widgets(primitive)) == 0 and len([k for k in primitive if k.startswith("p_")]) == 21
    a, b = run_prompt(literal), run_prompt(primitive)
    a.raise_for_error()
    b.raise_for_error()
    lora_a, lora_b = a.output("3")[0], b.output("3")[0]
    for module, pairs in lora_a.modules.items():
        for p, q in zip(pairs, lora_b.modules[module]):
            assert torch.equal(p.down, q.down) and torch.equal(p.up, q.up), module
    assert b.ui["4"]["text"][0].startswith("saved loras/musar_test/errors_")


def test_combo_widgets_take_literals_only_and_linked_none_is_skipped(pack):
    import nodes

    # ComfyUI refuses a STRING link into a V3 combo (type mismatch); a custom "any"-typed node
    # could still link one, so validate_inputs must accept None (linked) for every input it names
    for class_type in ("MUSAR_LoadDiptychDataset", "MUSAR_TrainDualLoRA", "MUSAR_SaveDualLoRA"):
        cls = nodes.NODE_CLASS_MAPPINGS[class_type]
        names = inspect.getfullargspec(cls.validate_inputs)
        assert names.varkw is None, class_type  # a **kwargs turns ComfyUI's own checks off
        assert cls.validate_inputs(**{n: None for n in names.args[1:]}) is True, class_type


@pytest.mark.parametrize("node, name, value, error, words", [
    ("2", "path", "../../../etc", "DatasetError", ("not inside the folders",)),
    ("2", "min_quality", 11, "DatasetError", ("min_quality", "from 0 to 10", "11")),
    ("2", "target_width", 136, "DatasetError", ("multiple of 16",)),
    ("2", "target_height", 8192, "DatasetError", ("target_height", "from 64 to 4096")),
    ("2", "reference_size", 8, "DatasetError", ("reference_size", "from 64 to 2048")),
    ("2", "prompt_template", "{desc_a:d}", "DatasetError", ("{desc_a:d}", "format spec")),
    ("2", "prompt_dropout", float("nan"), "DatasetError", ("prompt_dropout", "nan")),
    ("2", "condition_dropout", 1.5, "DatasetError", ("condition_dropout", "from 0.0 to 1.0")),
    ("2", "seed", -1, "DatasetError", ("seed",)),
    ("3", "steps", 0, "TrainingError", ("steps", "from 1 to 1000000", "got 0")),
    ("3", "learning_rate", float("nan"), "TrainingError", ("learning_rate", "nan")),
    ("3", "noisy_rank", -1, "TrainingError", ("noisy_rank",)),
    ("3", "subject_rank", 5000, "TrainingError", ("subject_rank", "from 0 to 4096")),
    ("3", "batch_size", 0, "TrainingError", ("batch_size",)),
    ("3", "grad_accumulation", 1000, "TrainingError", ("grad_accumulation",)),
    ("3", "seed", 2**40, "TrainingError", ("seed",)),
    ("3", "checkpoint_every", -5, "TrainingError", ("checkpoint_every",)),
    ("3", "validation_every", -1, "TrainingError", ("validation_every",)),
    ("3", "output_name", "../escape", "TrainingError", ("plain name",)),
    ("4", "filename_prefix", "../../../tmp/x", "TrainingError", ("inside models/loras",)),
])
def test_a_bad_value_from_a_primitive_node_is_a_typed_error_before_training(
        run_prompt, data, node, name, value, error, words):
    prompt = linked(graph(data["pairs"], output_name=f"linked_bad_{name}"), node, name, value)
    result = run_prompt(prompt)
    assert not result.ok and result.error is not None, result.node_errors
    err = result.error
    assert err["node_id"] == node and err["exception_type"].endswith(error), err
    assert all(w in err["exception_message"] for w in words), err["exception_message"]
    if node != "4":  # nothing trained: no checkpoint folder for the run
        run = os.path.join(folder_paths.get_output_directory(), "musar_training", f"linked_bad_{name}")
        assert not os.path.exists(run) or not os.listdir(run)


# ---- paths: datasets only inside musar_datasets / input/, runs only under output/ -------------
def _validation_text(result, node):
    assert not result.ok and node in result.node_errors, (result.error, result.node_errors)
    return str(result.node_errors[node])


def _error_text(result, node):
    """The refusal at validation, or the node's error when it ran."""
    if result.error is not None and result.error.get("node_id") == node:
        assert result.error["exception_type"].endswith("DatasetError"), result.error
        return result.error["exception_message"]
    return _validation_text(result, node)


def test_dataset_paths_outside_comfyui_folders_are_refused_alike_whether_they_exist_or_not(
        run_prompt, data, tmp_path):
    secret = make_pairs(tmp_path / "secret")  # a real dataset, outside every allowed folder
    roots = folder_paths.get_folder_paths("musar_datasets")[0]
    (data["root"] / "escape").symlink_to(secret, target_is_directory=True)
    texts = {}
    for label, path in {"exists": str(secret), "missing": str(tmp_path / "nothing"),
                        "dotdot": os.path.relpath(secret, roots), "symlink": str(data["root"] / "escape"),
                        "relative symlink": os.path.relpath(data["root"] / "escape", roots)}.items():
        text = _error_text(run_prompt(graph(path)), "2").replace(repr(path), "PATH")
        # a relative path may also be looked up in input/, where it is simply missing
        refused = "does not exist in models/musar_datasets" if label == "relative symlink" \
            else "is not inside the folders this server lets MUSAR use"
        assert refused in text and str(tmp_path) not in text and "secret" not in text, text
        texts[label] = text
    assert texts["exists"] == texts["missing"]  # nothing tells an existing path from a missing one


def test_datasets_are_read_from_input_and_from_a_folder_the_server_registers(run_prompt, data, tmp_path):
    make_pairs(Path(folder_paths.get_input_directory()) / "pairs_in_input")
    run_prompt(graph("pairs_in_input", output_name="from_input")).raise_for_error()
    registered = make_pairs(tmp_path / "registered" / "pairs")
    assert "not inside" in _validation_text(run_prompt(graph(registered)), "2")
    # what a "musar_datasets:" entry of extra_model_paths.yaml does at server start
    folder_paths.add_model_folder_path("musar_datasets", str(tmp_path / "registered"))
    try:
        run_prompt(graph("pairs", output_name="from_registered")).raise_for_error()
    finally:
        folder_paths.folder_names_and_paths["musar_datasets"][0].remove(str(tmp_path / "registered"))


@pytest.mark.parametrize("resume", ["/etc/passwd", "../errors/errors-step000002.safetensors", "latest "])
def test_resume_takes_none_or_latest_only(run_prompt, data, resume):
    text = _validation_text(run_prompt(graph(data["pairs"], resume=resume)), "3")
    assert "resume: unknown option" in text and "'none', 'latest'" in text


def test_a_checkpoint_symlinked_from_outside_the_run_folder_is_not_resumed(run_prompt, data, tmp_path):
    run_prompt(graph(data["pairs"], output_name="planted", steps=2)).raise_for_error()
    run = os.path.join(folder_paths.get_output_directory(), "musar_training", "planted")
    real = os.path.join(run, "planted-step000002.safetensors")
    elsewhere = tmp_path / "planted-step000009.safetensors"
    os.replace(real, elsewhere)
    os.symlink(elsewhere, os.path.join(run, "planted-step000009.safetensors"))
    result = run_prompt(graph(data["pairs"], output_name="planted", steps=4, resume="latest"))
    result.raise_for_error()
    assert result.output("3")[0].metadata["musar.train.step"] == "4"
    assert sorted(os.listdir(run)) == ["planted-step000004.safetensors", "planted-step000009.safetensors"]
