"""MUSAR Route References, Reference Label and Layout Region as nodes in real ComfyUI graphs
(stock ReferenceLatent / FluxKontextMultiReferenceLatentMethod / KSampler, PromptExecutor):
good graphs on the FLUX.1 and FLUX.2 stand-ins, the preview's legend and region outlines, and
every bad input as a typed error before the first sampling step."""

import pytest
import torch
from musar_helpers import pack_module

from musar_run import runtime

pytestmark = pytest.mark.usefixtures("one_thread")
FLUX1, FLUX2 = "tiny (128 wide, 2+2 blocks)", "FLUX.2 tiny (128 wide, 2+2 blocks)"
ROUTE = {"static_routing": True, "block_prompt_references": False, "dynamic_routing": True,
         "start_percent": 0.0, "end_percent": 1.0, "routing_blocks": "double", "threshold": 0.0,
         "smoothing": 1, "symmetric": False, "strength": 1.0}


def graph(size=FLUX1, n_refs=2, method="index", labels=True):
    """Stand-ins -> prompt -> n ReferenceLatent (VAE-encoded pictures) -> method -> Route
    References (+ labels, the first with a hard left-half region) -> KSampler -> preview."""
    latent = "EmptyFlux2LatentImage" if size == FLUX2 else "EmptySD3LatentImage"
    g = {
        "1": {"class_type": "MUSAR_TinyFluxLoader", "inputs": {"size": size, "seed": 0}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "two things"}},
        "3": {"class_type": latent, "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["20", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "seed": 1, "steps": 3, "cfg": 2.0,
            "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "MUSAR_RoutingPreview", "inputs": {
            "routing": ["20", 1], "images": ["5", 0], "step": -1, "opacity": 0.5}},
        "20": {"class_type": "MUSAR_RouteReferences", "inputs": {"model": ["1", 0], **ROUTE}},
        "30": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "31": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 128}},
        "32": {"class_type": "MaskComposite", "inputs": {"destination": ["30", 0], "source": ["31", 0],
                                                         "x": 0, "y": 0, "operation": "add"}},
        "33": {"class_type": "MUSAR_LayoutRegion", "inputs": {"mask": ["32", 0], "mode": "hard",
                                                              "strength": 0.5}},
        "34": {"class_type": "MUSAR_ReferenceLabel", "inputs": {
            "reference": 1, "caption": "a red mug", "color": "#ff0000", "region": ["33", 0]}},
    }
    previous = "2"
    for j in range(n_refs):
        g[str(40 + j)] = {"class_type": "EmptyImage", "inputs": {"width": 64 + 32 * j, "height": 64,
                                                                 "batch_size": 1, "color": 0x2040ff * (j + 1)}}
        g[str(50 + j)] = {"class_type": "VAEEncode", "inputs": {"pixels": [str(40 + j), 0], "vae": ["1", 2]}}
        g[str(10 + j)] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": [previous, 0],
                                                                      "latent": [str(50 + j), 0]}}
        previous = str(10 + j)
    if n_refs and method:
        g["19"] = {"class_type": "FluxKontextMultiReferenceLatentMethod", "inputs": {
            "conditioning": [previous, 0], "reference_latents_method": method}}
        previous = "19"
    g["4"]["inputs"]["positive"] = [previous, 0]
    if labels:
        g["20"]["inputs"]["labels"] = ["34", 0]
    return g


@pytest.fixture(scope="module")
def executor():
    return runtime.new_executor()


@pytest.fixture
def run_prompt(executor, monkeypatch):
    """Runs a prompt; ``run_prompt.calls`` counts the FLUX model calls of the last run."""
    import comfy.ldm.flux.model

    calls, forward = [], comfy.ldm.flux.model.Flux._forward
    monkeypatch.setattr(comfy.ldm.flux.model.Flux, "_forward",
                        lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))

    def run(prompt):
        calls.clear()
        return runtime.run_prompt(prompt, executor=executor)

    run.calls = lambda: len(calls)
    return run


@pytest.mark.parametrize("size,method", [(FLUX1, "offset"), (FLUX1, "uxo/uno"), (FLUX2, None)])
def test_reference_graph_runs_and_the_preview_names_and_outlines_the_references(run_prompt, size, method):
    result = run_prompt(graph(size, method=method))
    result.raise_for_error()
    assert run_prompt.calls() == 6  # 3 steps x (cond, uncond): the negative has no references
    ui = result.ui["6"]
    assert ui["captions"] == ["a red mug", "reference 2"]
    assert ui["colors"][0] == [1.0, 0.0, 0.0]
    overlay, masks = result.output("6")
    assert overlay.shape == (1, 128, 128, 3) and masks.shape == (2, 128, 128)
    assert masks[0][:, :64].all()  # inside its hard region every token is routed to reference 1
    assert (masks.sum(0) == 1).all()  # outside, the dynamic route: one reference per token
    red = (overlay[0] == torch.tensor([1.0, 0.0, 0.0])).all(-1)
    assert red[:, 62:64].all()  # the region's outline, in its colour, all along its edge


def _expect_error(run_prompt, prompt, node, kind, match):
    result = run_prompt(prompt)
    assert not result.ok
    if result.error is None or "node_id" not in result.error:  # refused by validate_inputs
        assert node in result.node_errors and match in str(result.node_errors), result.node_errors
        return
    err = result.error
    assert err["node_id"] == node and err["exception_type"].endswith(kind), err
    assert match in err["exception_message"], err["exception_message"]
    assert run_prompt.calls() == 0  # refused before the first model call


def _set(prompt, node, **inputs):
    prompt[node]["inputs"].update(inputs)
    return prompt


@pytest.mark.parametrize("prompt,node,kind,match", [
    (graph(n_refs=0, labels=False), "4", "LayoutError", "holds no reference latents"),
    (graph(n_refs=1), "4", "LayoutError", "names reference"),  # a label for reference 1 is fine
    (_set(graph(), "34", reference=3), "4", "LayoutError", "names reference 3"),
    (_set(_set(graph(), "30", width=64), "31", width=32), "4", "LayoutError", "64x128 px but the image"),
    (_set(graph(), "31", value=0.0), "33", "LayoutError", "empty"),
    (_set(graph(), "34", color="red"), "34", "", "#RRGGBB"),
    (_set(graph(), "33", mode="firm"), "33", "", "unknown option 'firm'"),
    (_set(_set(graph(), "33", mode="soft"), "20", dynamic_routing=False), "20", "RoutingError",
     "soft MUSAR Layout Region"),
    (_set(graph(), "20", start_percent=0.9, end_percent=0.5), "20", "", "start_percent"),
    (_set(graph(), "20", routing_blocks="d7"), "20", "RoutingError", "2 double blocks"),
])
def test_bad_reference_inputs_are_typed_errors_before_sampling(run_prompt, prompt, node, kind, match):
    if match == "names reference" and node == "4":
        run_prompt(prompt).raise_for_error()
        return
    _expect_error(run_prompt, prompt, node, kind, match)


def test_musar_subject_options_on_flux2_are_refused(pack, standins):
    errors = pack_module(pack, "musar.errors")
    routing_nodes = pack_module(pack, "nodes.apply_routing")
    lora_nodes = pack_module(pack, "nodes.lora")
    from musar_helpers import ROUTING as ROUTING_DEFAULTS
    from musar_helpers import make_subjects

    flux2 = standins.build_flux(standins.flux2_unet_config(), seed=1)
    with pytest.raises(errors.ModelError, match="MUSAR Route References"):
        routing_nodes.MusarApplyRouting.execute(flux2, make_subjects(pack), **ROUTING_DEFAULTS)
    with pytest.raises(errors.ModelError, match="FLUX.1 only"):
        lora_nodes.MusarLoadDualLoRA.execute(flux2, lora_name="any.safetensors", strength_noisy=1.0,
                                             strength_subject=1.0)


def test_stacking_and_caching_conflicts_are_refused(pack, tiny_flux):
    errors = pack_module(pack, "musar.errors")
    patcher = pack_module(pack, "nodes.patcher")
    refs = pack_module(pack, "musar.references")
    from musar_helpers import make_subjects, routed, settings

    model = tiny_flux()
    once, _ = patcher.route_references(model, refs.ReferenceLabels(), settings(pack))
    with pytest.raises(errors.RoutingError, match="already went through MUSAR Route References"):
        patcher.route_references(once, refs.ReferenceLabels(), settings(pack))
    cached, _ = routed(pack, model, make_subjects(pack), cache=True)
    with pytest.raises(errors.RoutingError, match="condition_cache"):
        patcher.route_references(cached, refs.ReferenceLabels(), settings(pack))
    with pytest.raises(errors.RoutingError, match="condition_cache"):
        routed(pack, once, make_subjects(pack), cache=True)
    label = refs.ReferenceLabel(2, "x")
    with pytest.raises(errors.LayoutError, match="labelled twice"):
        refs.ReferenceLabels().add(label).add(label)


def test_flux2_standin_has_flux2_detection_keys_and_classes(standins):
    import comfy.ldm.flux.model
    import comfy.model_base
    import comfy.model_detection

    model = standins.build_flux(standins.flux2_unet_config(), seed=0)
    assert isinstance(model.model, comfy.model_base.Flux2)
    dm = model.model.diffusion_model
    assert isinstance(dm, comfy.ldm.flux.model.Flux) and dm.params.global_modulation
    detected = comfy.model_detection.detect_unet_config(dm.state_dict(), "")
    assert detected["image_model"] == "flux2" and detected["global_modulation"]
    vae = standins.build_flux2_vae(0)
    latent = vae.encode(torch.rand(1, 64, 96, 3))
    assert latent.shape == (1, 128, 4, 6)
