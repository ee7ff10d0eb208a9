"""Bad input gets a clear MusarError (what was expected, what arrived, what to do) from the
MUSAR node, before the sampler runs; the executor keeps working afterwards."""

import copy
import os

import comfy.model_patcher
import comfy.supported_models
import folder_paths
import pytest
import torch
from musar_helpers import ROUTING, make_subjects, pack_module
from musar_helpers import routing_graph as graph


@pytest.fixture(scope="module")
def run_prompt():
    """One executor for the module: unchanged nodes (the stand-in loader) come from its cache."""
    from musar_run import runtime

    executor = runtime.new_executor()
    return lambda prompt: runtime.run_prompt(prompt, executor=executor)


def _expect_musar_error(run_prompt, prompt, node, match):
    result = run_prompt(prompt)
    assert not result.ok
    if result.error is None or "node_id" not in result.error:  # rejected by validation
        text = str(result.node_errors)
        assert node in result.node_errors and match in text, text
        return
    err = result.error
    assert err["node_id"] == node, err
    assert err["exception_type"].rsplit(".", 1)[-1].endswith("Error"), err
    assert match in err["exception_message"], err["exception_message"]
    executed = [d for e, d in result.messages if e == "execution_error"][0]["executed"]
    assert "4" not in executed  # the sampler never ran


def test_a_good_graph_runs(run_prompt):
    run_prompt(graph()).raise_for_error()


def test_seventeen_subjects_are_refused(run_prompt):
    _expect_musar_error(run_prompt, graph(17), "116", "at most 16")


@pytest.mark.parametrize("change,node,match", [
    (lambda g: g["9"]["inputs"].update(width=32, height=32), "100", "at least 64"),
    (lambda g: g["100"]["inputs"].update(caption="   "), "100", "caption is empty"),
    (lambda g: g["100"]["inputs"].update(caption=" ".join(["word"] * 90)), "100", "tokens long"),
    (lambda g: g["9"]["inputs"].update(batch_size=3), "100", "batch of 3"),
    (lambda g: g.update({"30": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 48}}})
     or g["100"]["inputs"].update(mask=["30", 0]), "100", "must match the image size"),
    (lambda g: g.update({"30": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}})
     or g["100"]["inputs"].update(mask=["30", 0]), "100", "selects none"),
    (lambda g: g["20"]["inputs"].update(routing_blocks="d99"), "20", "2 double blocks"),
    (lambda g: g["20"]["inputs"].update(routing_blocks="middle"), "20", "not understood"),
    (lambda g: g["20"]["inputs"].update(symmetric=True, condition_cache=True), "20", "conflict"),
    (lambda g: g["20"]["inputs"].update(symmetric=True, dynamic_routing=False), "20", "needs dynamic"),
    (lambda g: g["20"]["inputs"].update(start_percent=0.8, end_percent=0.5), "20", "start_percent"),
    (lambda g: g["100"]["inputs"].update(reference_size=72), "100", "multiple of 16"),
])
def test_bad_graph_inputs_are_explained(run_prompt, change, node, match):
    prompt = graph()
    change(prompt)
    _expect_musar_error(run_prompt, prompt, node, match)


def test_nan_image_is_refused(pack):
    subject_nodes = pack_module(pack, "nodes.subject")
    errors = pack_module(pack, "musar.errors")
    image = torch.full((1, 64, 64, 3), float("nan"))
    with pytest.raises(errors.LayoutError, match="NaN"):
        subject_nodes.MusarSubject.execute(image, None, None, caption="a thing", crop="center crop",
                                           reference_size=64)


def test_non_flux_model_is_refused(pack):
    routing_nodes = pack_module(pack, "nodes.apply_routing")
    lora_nodes = pack_module(pack, "nodes.lora")
    errors = pack_module(pack, "musar.errors")
    cfg = comfy.supported_models.SD3({
        "in_channels": 16, "pos_embed_scaling_factor": None, "depth": 2, "patch_size": 2,
        "out_channels": 16, "pos_embed_max_size": 32, "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}}})
    cfg.set_inference_dtype(torch.float32, None)
    sd3 = comfy.model_patcher.ModelPatcher(cfg.get_model({}), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(errors.ModelError, match="FLUX.1"):
        routing_nodes.MusarApplyRouting.execute(sd3, make_subjects(pack), **ROUTING)
    with pytest.raises(errors.ModelError, match="FLUX.1"):
        lora_nodes.MusarLoadDualLoRA.execute(sd3, lora_name="any.safetensors", strength_noisy=1.0,
                                             strength_subject=1.0)
    reference_nodes = pack_module(pack, "nodes.references")
    routing_defaults = {k: v for k, v in ROUTING.items() if k not in ("condition_cache", "positions")}
    with pytest.raises(errors.ModelError) as refused:  # the families it does route, by name
        reference_nodes.MusarRouteReferences.execute(sd3, **routing_defaults)
    message = str(refused.value)
    assert all(name in message for name in ("FLUX.1", "Kontext", "FLUX.2", "[klein]", "Qwen-Image", "2511"))
    assert "SD3" in message  # what arrived


def test_subjects_from_another_vae_or_text_encoder_are_refused(pack, tiny_flux):
    routing_nodes = pack_module(pack, "nodes.apply_routing")
    errors = pack_module(pack, "musar.errors")
    model = tiny_flux()
    subj = pack_module(pack, "musar.subjects")
    sd_vae = subj.SubjectSet().add(subj.Subject(torch.randn(1, 4, 8, 8), "x", torch.randn(1, 3, 64)))
    with pytest.raises(errors.LayoutError, match="latent channels"):
        routing_nodes.MusarApplyRouting.execute(model, sd_vae, **ROUTING)
    wrong_te = make_subjects(pack, context_dim=32)
    with pytest.raises(errors.LayoutError, match="text encoder"):
        routing_nodes.MusarApplyRouting.execute(model, wrong_te, **ROUTING)


def test_empty_subject_set_is_refused(pack, tiny_flux):
    routing_nodes = pack_module(pack, "nodes.apply_routing")
    errors = pack_module(pack, "musar.errors")
    subj = pack_module(pack, "musar.subjects")
    with pytest.raises(errors.LayoutError, match="no subjects"):
        routing_nodes.MusarApplyRouting.execute(tiny_flux(), subj.SubjectSet(), **ROUTING)


@pytest.mark.parametrize("content,match", [(b"\x00garbage" * 10, "could not be read"), (None, "unknown layout")])
def test_bad_lora_files_fail_in_the_loader_node(run_prompt, content, match):
    from safetensors.torch import save_file

    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    name = f"bad_{'corrupt' if content else 'layout'}.safetensors"
    if content:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    else:
        save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, os.path.join(folder, name))
    prompt = copy.deepcopy(graph())
    prompt["40"] = {"class_type": "MUSAR_LoadDualLoRA", "inputs": {
        "model": ["1", 0], "lora_name": name, "strength_noisy": 1.0, "strength_subject": 1.0}}
    prompt["20"]["inputs"]["model"] = ["40", 0]
    _expect_musar_error(run_prompt, prompt, "40", match)


def test_executor_keeps_working_after_errors(run_prompt):
    bad = graph()
    bad["20"]["inputs"]["routing_blocks"] = "d99"
    assert not run_prompt(bad).ok
    run_prompt(graph()).raise_for_error()
