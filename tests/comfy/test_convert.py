"""UI → API conversion on small hand-made UI graphs, against the real runtime's /object_info."""

import pytest

from musar_run import convert


@pytest.fixture(scope="module")
def info(pack):
    return convert.object_info_in_process()


def node(node_id, kind, widgets=None, inputs=(), outputs=(), mode=0, title=None):
    """A UI-format node; inputs: (name, type, link[, widget]); outputs: (name, type, [links])."""
    out = {"id": node_id, "type": kind, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0,
           "mode": mode, "properties": {"Node name for S&R": kind},
           "inputs": [{"name": i[0], "type": i[1], "link": i[2],
                       **({"widget": {"name": i[0]}} if len(i) > 3 else {})} for i in inputs],
           "outputs": [{"name": o[0], "type": o[1], "links": list(o[2]), "slot_index": k}
                       for k, o in enumerate(outputs)]}
    if widgets is not None:
        out["widgets_values"] = widgets
    if title:
        out["title"] = title
    return out


def workflow(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


KSAMPLER_WIDGETS = [123, "randomize", 7, 2.5, "euler", "simple", 1.0]


def ksampler(node_id, model=None, pos=None, neg=None, latent=None, seed_link=None, mode=0):
    return node(node_id, "KSampler", KSAMPLER_WIDGETS, [
        ("model", "MODEL", model), ("positive", "CONDITIONING", pos),
        ("negative", "CONDITIONING", neg), ("latent_image", "LATENT", latent),
        ("seed", "INT", seed_link, True)], [("LATENT", "LATENT", [])], mode=mode)


def unet_loader(node_id, links, mode=0):
    return node(node_id, "UNETLoader", ["flux1-dev.safetensors", "default"], [],
                [("MODEL", "MODEL", links)], mode=mode)


def test_control_after_generate_values_are_skipped(info):
    api = convert.ui_to_api(workflow([ksampler(1)], []), info)
    assert api["1"]["inputs"] == {"seed": 123, "steps": 7, "cfg": 2.5, "sampler_name": "euler",
                                  "scheduler": "simple", "denoise": 1.0}
    assert api["1"]["_meta"] == {"title": "KSampler"}


def test_explicit_no_control_and_upload_button_slots(info):
    tiny = node(1, "MUSAR_TinyFluxLoader", ["tiny (128 wide, 2+2 blocks)", 5])
    image = node(2, "LoadImage", ["musar_red_mug.png", "image"], outputs=[("IMAGE", "IMAGE", [])])
    api = convert.ui_to_api(workflow([tiny, image], []), info)
    assert api["1"]["inputs"] == {"size": "tiny (128 wide, 2+2 blocks)", "seed": 5}
    assert api["2"]["inputs"] == {"image": "musar_red_mug.png"}


def test_reroutes_are_followed_and_notes_dropped(info):
    nodes = [unet_loader(1, [1]),
             node(2, "Reroute", None, [("", "*", 1)], [("", "MODEL", [2])]),
             node(3, "Reroute", None, [("", "*", 2)], [("", "MODEL", [3])]),
             ksampler(4, model=3),
             node(5, "Note", ["models go in models/"]), node(6, "MarkdownNote", ["# hi"])]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "MODEL"]]
    api = convert.ui_to_api(workflow(nodes, links), info)
    assert sorted(api) == ["1", "4"]
    assert api["4"]["inputs"]["model"] == ["1", 0]


def test_primitive_values_are_inlined_over_the_widget_value(info):
    nodes = [node(1, "PrimitiveNode", [99, "fixed"], [], [("INT", "INT", [1])]),
             ksampler(2, seed_link=1)]
    api = convert.ui_to_api(workflow(nodes, [[1, 1, 0, 2, 4, "INT"]]), info)
    assert list(api) == ["2"]
    assert api["2"]["inputs"]["seed"] == 99


def test_widget_input_fed_by_a_real_node_becomes_a_link(info):
    nodes = [node(1, "PrimitiveString", ["a cat"], [], [("STRING", "STRING", [1])]),
             node(2, "CLIPTextEncode", ["ignored"], [("clip", "CLIP", None), ("text", "STRING", 1, True)],
                  [("CONDITIONING", "CONDITIONING", [])])]
    api = convert.ui_to_api(workflow(nodes, [[1, 1, 0, 2, 1, "STRING"]]), info)
    assert api["2"]["inputs"]["text"] == ["1", 0]
    assert api["1"]["inputs"] == {"value": "a cat"}


def test_bypassed_node_forwards_its_input_of_the_same_type(info):
    lora = node(2, "MUSAR_LoadDualLoRA", ["x.safetensors", 1.0, 1.0], [("model", "MODEL", 1)],
                [("MODEL", "MODEL", [2])], mode=4)
    nodes = [unet_loader(1, [1]), lora, ksampler(3, model=2)]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"]]
    api = convert.ui_to_api(workflow(nodes, links), info)
    assert sorted(api) == ["1", "3"]
    assert api["3"]["inputs"]["model"] == ["1", 0]


def test_bypassed_node_without_a_matching_input_drops_the_link(info):
    decode = node(2, "VAEDecode", None, [("samples", "LATENT", 1), ("vae", "VAE", None)],
                  [("IMAGE", "IMAGE", [2])], mode=4)
    latent = node(1, "EmptySD3LatentImage", [64, 64, 1], [], [("LATENT", "LATENT", [1])])
    save = node(3, "SaveImage", ["x"], [("images", "IMAGE", 2)])
    links = [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "IMAGE"]]
    api = convert.ui_to_api(workflow([latent, decode, save], links), info)
    assert api["3"]["inputs"] == {"filename_prefix": "x"}


def test_muted_nodes_and_their_links_are_removed(info):
    nodes = [unet_loader(1, [1], mode=2), ksampler(2, model=1)]
    api = convert.ui_to_api(workflow(nodes, [[1, 1, 0, 2, 0, "MODEL"]]), info)
    assert list(api) == ["2"]
    assert "model" not in api["2"]["inputs"]


def test_links_as_objects_and_custom_titles(info):
    nodes = [unet_loader(1, [1]), ksampler(2, model=1)]
    nodes[1]["title"] = "Sampler A"
    links = [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0,
              "type": "MODEL"}]
    api = convert.ui_to_api(workflow(nodes, links), info)
    assert api["2"]["inputs"]["model"] == ["1", 0]
    assert api["2"]["_meta"]["title"] == "Sampler A"


def test_unknown_node_type_is_reported_by_name(info):
    nodes = [node(1, "SomePackNode", [1]), ksampler(2)]
    with pytest.raises(convert.ConversionError, match="node type 'SomePackNode' .* is not installed"):
        convert.ui_to_api(workflow(nodes, []), info)
    nodes[0]["mode"] = 2  # a muted node of an unknown type is simply left out
    assert list(convert.ui_to_api(workflow(nodes, []), info)) == ["2"]


def test_api_prompts_pass_through_and_other_json_is_rejected(info):
    api = {"1": {"class_type": "KSampler", "inputs": {}}}
    assert convert.to_api(api, info) is api
    with pytest.raises(convert.ConversionError, match="neither a UI workflow"):
        convert.to_api({"foo": 1}, info)
