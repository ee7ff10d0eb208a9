"""The pack inside the REAL ComfyUI server (``python main.py`` as a subprocess, over HTTP).

One server per module (about 10-25 s to start on a CPU machine); the MUSAR graphs run on the
tiny FLUX stand-ins, so a queued prompt finishes in seconds.
"""

from __future__ import annotations

import uuid

import pytest
import serverutil

import nodes as comfy_nodes

pytestmark = pytest.mark.timeout(180)

TINY = "tiny (128 wide, 2+2 blocks)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = serverutil.make_base_dir(tmp_path_factory.mktemp("comfy-server"))
    with serverutil.running_server(base) as srv:
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    return server.get_json("/object_info")


def musar_prompt(routing_blocks: str = "double", steps: int = 3) -> dict:
    """API-format graph: stand-ins -> two chained Subjects -> ApplyRouting -> KSampler -> preview."""
    def subject(color, caption, chain=None):
        inputs = {"image": [color, 0], "vae": ["1", 2], "clip": ["1", 1], "caption": caption,
                  "crop": "center crop", "reference_size": 64}
        if chain:
            inputs["subjects"] = [chain, 0]
        return {"class_type": "MUSAR_Subject", "inputs": inputs}

    return {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": TINY, "seed": 0}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                      "color": 0xE04030}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                      "color": 0x2090F0}},
        "4": subject("2", "a red cube"),
        "5": subject("3", "a blue ball", chain="4"),
        "6": {"class_type": "MUSAR_ApplyRouting", "inputs": {
            "model": ["1", 0], "subjects": ["5", 0], "static_routing": True, "dynamic_routing": True,
            "start_percent": 0.0, "end_percent": 1.0, "routing_blocks": routing_blocks,
            "threshold": 0.0, "smoothing": 3, "symmetric": False, "strength": 1.0,
            "condition_cache": False, "positions": "shared"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1],
                                                         "text": "a red cube and a blue ball"}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64,
                                                              "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "positive": ["7", 0], "negative": ["7", 0], "latent_image": ["8", 0],
            "seed": 1, "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "MUSAR_RoutingPreview", "inputs": {
            "routing": ["6", 1], "images": ["10", 0], "step": -1, "opacity": 0.5}},
    }


def queue(server, prompt: dict):
    status, body = server.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    return status, body


def test_object_info_lists_every_node_with_its_schema_inputs(object_info):
    for node_id in serverutil.NODE_IDS:
        assert node_id in object_info, f"{node_id} missing from /object_info"
        served = object_info[node_id]
        schema = comfy_nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        required = [i.id for i in schema.inputs if not i.optional]
        optional = [i.id for i in schema.inputs if i.optional]
        assert list(served["input"].get("required", {})) == required, node_id
        assert list(served["input"].get("optional", {})) == optional, node_id
        assert served["input_order"].get("required", []) == required, node_id
        assert len(served["output"]) == len(schema.outputs), node_id
        assert served["display_name"] == schema.display_name
        assert served["category"].startswith("MUSAR")
        # The frontend finds help pages and the node badge through python_module.
        assert served["python_module"] == f"custom_nodes.{serverutil.PACK_NAME}"


def test_extensions_lists_and_serves_every_pack_script(server):
    listed = [p for p in server.get_json("/extensions")
              if p.startswith(f"/extensions/{serverutil.PACK_NAME}/")]
    on_disk = sorted(p.relative_to(serverutil.ROOT / "web").as_posix()
                     for p in (serverutil.ROOT / "web").rglob("*.js"))
    assert on_disk, "web/ has no scripts"
    assert sorted(p.split(f"/extensions/{serverutil.PACK_NAME}/", 1)[1] for p in listed) == on_disk
    for path in listed:
        status, headers, body = server.request(path)
        assert status == 200, path
        assert "javascript" in headers.get("Content-Type", ""), (path, headers.get("Content-Type"))
        assert body.strip(), path


def test_help_page_is_served_for_every_node(server):
    for node_id in serverutil.NODE_IDS:
        status, _, body = server.request(f"/extensions/{serverutil.PACK_NAME}/docs/{node_id}.md")
        assert status == 200, node_id
        assert body.decode().lstrip().startswith("#"), node_id


def test_server_log_shows_the_pack_imported(server):
    assert not server.pack_import_failures(), "\n".join(server.pack_import_failures())
    loaded = [line for line in server.log().splitlines()
              if "seconds" in line and line.rstrip().endswith(f"custom_nodes/{serverutil.PACK_NAME}")]
    assert loaded and "IMPORT FAILED" not in loaded[0], server.log_tail()


def test_musar_graph_queued_over_http_completes(server):
    status, body = queue(server, musar_prompt())
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["11"]["images"]
    assert len(images) == 1
    img = images[0]
    status, headers, data = server.request(
        f"/view?filename={img['filename']}&subfolder={img['subfolder']}&type={img['type']}")
    assert status == 200 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_an_error_and_the_server_keeps_answering(server):
    # Syntax errors are caught by validate_inputs before anything runs (HTTP 400).
    status, body = queue(server, musar_prompt(routing_blocks="bogus"))
    assert status == 400, body
    assert "6" in body["node_errors"], body
    assert "not understood" in str(body["node_errors"]["6"])
    # Out-of-range blocks depend on the model: the run fails at ApplyRouting, before sampling.
    status, body = queue(server, musar_prompt(routing_blocks="d99"))
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    errors = [m for kind, m in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["node_type"] == "MUSAR_ApplyRouting", entry["status"]
    assert "double blocks" in errors[0]["exception_message"]
    # ... and the server still answers and still runs graphs.
    assert server.get_json("/system_stats")["system"]["comfyui_version"]
    status, body = queue(server, musar_prompt(steps=2))
    assert status == 200, body
    assert server.wait_history(body["prompt_id"])["status"]["status_str"] == "success"


def test_help_pages_name_every_input_of_every_served_node(object_info):
    docs = serverutil.ROOT / "web" / "docs"
    missing = []
    for node_id, info in object_info.items():
        if not node_id.startswith("MUSAR_"):
            continue
        page = docs / f"{node_id}.md"
        if not page.is_file():
            missing.append(f"{page.name}: no help page")
            continue
        text = page.read_text()
        for section in ("required", "optional"):
            missing += [f"{page.name}: input `{name}` not described"
                        for name in info["input"].get(section, {}) if f"`{name}`" not in text]
    assert not missing, "\n".join(missing)
