"""The shipped workflows: they convert, validate in real ComfyUI, equal their committed API copies,
and the real server lists them as templates. One real server (HTTP) is started for this module."""

import json
import shutil
from pathlib import Path

import pytest
import serverutil

from musar_run import convert, edits, runtime

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def _load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def info(pack):
    return convert.object_info_in_process()


@pytest.fixture(scope="module")
def prepared(info, base_dir):
    """Placeholder model files named as in the workflows (validation only checks that the names
    are listed). Nothing goes into the input folder: the workflows' pictures come from the pack
    (MUSAR_ExampleImage). Removed afterwards so other test modules of the session see the base
    directory as it was."""
    import folder_paths

    created = []

    def place(target: Path, source: Path | None = None):
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target) if source else target.touch()
        created.append(target)

    for name in NAMES:
        for node in convert.ui_to_api(_load(WORKFLOWS / f"{name}.json"), info).values():
            for key, value in node["inputs"].items():
                folder = edits.MODEL_INPUTS.get((node["class_type"], key))
                if folder and isinstance(value, str):
                    place(Path(folder_paths.get_folder_paths(folder)[0]) / value)
    yield base_dir
    for path in created:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def server(prepared):
    """The real ComfyUI server on the same base directory, with the pack in its custom_nodes."""
    if not (prepared / "custom_nodes" / serverutil.PACK_NAME).exists():
        serverutil.make_base_dir(prepared)
    with serverutil.running_server(prepared, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def server_info(server):
    return server.get_json("/api/object_info")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_workflow_validates_in_real_comfyui_with_an_empty_input_folder(name, info, prepared,
                                                                            tmp_path):
    import folder_paths

    prompt = convert.ui_to_api(_load(WORKFLOWS / f"{name}.json"), info)
    assert "LoadImage" not in {n["class_type"] for n in prompt.values()}, (
        "a shipped workflow names a picture in the user's input folder: use MUSAR_ExampleImage")
    user_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))  # a first-run user: nothing copied anywhere
    try:
        valid, error, outputs, node_errors = runtime.validate(prompt)
    finally:
        folder_paths.set_input_directory(user_input)
    assert not any(tmp_path.iterdir())
    assert valid, (error, node_errors)
    assert node_errors == {}
    if any(n["class_type"] == "MUSAR_ApplyRouting" for n in prompt.values()):
        assert {prompt[o]["class_type"] for o in outputs} == {"SaveImage", "MUSAR_RoutingPreview"}


def test_committed_api_copies_equal_the_conversion_by_the_servers_object_info(server_info, info):
    for name in NAMES:
        ui = _load(WORKFLOWS / f"{name}.json")
        committed = _load(WORKFLOWS / "api" / f"{name}.json")
        assert convert.ui_to_api(ui, server_info) == committed, (
            f"workflows/api/{name}.json is stale: run scripts/make_demo_assets.py")
        assert convert.ui_to_api(ui, info) == committed


def test_in_process_object_info_is_what_the_server_answers(server_info, prepared):
    info = convert.object_info_in_process()  # now, with the placeholder files in place
    assert set(server_info) == set(info)
    used = {n["type"] for name in NAMES for n in _load(WORKFLOWS / f"{name}.json")["nodes"]}
    for kind in sorted((used - convert.NOTE_TYPES) | {"MUSAR_TinyFluxLoader", "PrimitiveInt"}):
        a, b = dict(server_info[kind]), dict(info[kind])
        a.pop("python_module"), b.pop("python_module")  # the pack's folder name differs
        assert a == b, kind


def test_workflows_hold_only_core_and_pack_nodes_with_full_widget_rows(info):
    for name in NAMES:
        workflow = _load(WORKFLOWS / f"{name}.json")
        assert workflow["version"] == 0.4
        assert workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
        assert workflow["last_link_id"] == len(workflow["links"])
        for node in workflow["nodes"]:
            if node["type"] in convert.NOTE_TYPES:
                continue
            module = info[node["type"]]["python_module"]
            assert module == "nodes" or module.startswith(("comfy_extras.", "custom_nodes.")), node
            slots = convert.widget_slots(info[node["type"]])
            assert len(node.get("widgets_values", [])) == len(slots), (name, node["id"], slots)
        notes = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in convert.NOTE_TYPES)
        used = {edits.MODEL_INPUTS.get((n["class_type"], k)) for n in convert.ui_to_api(workflow, info).values()
                for k in n["inputs"]} - {None}
        for folder in used:  # the Note says where each model file goes
            assert f"{folder}/" in notes, (name, folder)


def test_server_lists_the_workflows_as_templates(server):
    templates = server.get_json("/api/workflow_templates")
    assert sorted(templates[runtime.PACK_NAME]) == NAMES
    for name in NAMES:
        served = server.get_json(f"/api/workflow_templates/{runtime.PACK_NAME}/{name}.json")
        assert served == _load(WORKFLOWS / f"{name}.json")
        status, _, body = server.request(f"/api/workflow_templates/{runtime.PACK_NAME}/{name}.jpg")
        assert status == 200 and body == (WORKFLOWS / f"{name}.jpg").read_bytes()  # thumbnail
