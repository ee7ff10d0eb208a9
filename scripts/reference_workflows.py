"""The shipped reference-routing workflows (MUSAR Route References), built by
``scripts/make_demo_assets.py`` with its ``Builder``:

- ``musar_flux2_references``      FLUX.2 [dev], two references, routed (the official FLUX.2
                                  sampling chain: SamplerCustomAdvanced + Flux2Scheduler).
- ``musar_flux2_references_ab``   the same graph sampled twice with one noise: the stock MODEL
                                  (unrouted) and the routed MODEL, saved side by side.
- ``musar_kontext_references``    FLUX.1 Kontext [dev], two references, routed (KSampler).
- ``musar_regions``               Kontext with a hard layout region per reference, drawn from
                                  the bundled layout picture ``musar_layout_two_regions.png``.
- ``musar_qwen_edit_references``  Qwen-Image-Edit (2509 or 2511), three pictures, routed.
- ``musar_klein_references``      FLUX.2 [klein], two references, routed (ComfyUI 0.33+).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

LAYOUT = "musar_layout_two_regions.png"
FLUX2_NOTE = """MODEL FILES (ComfyUI/models/...)
- diffusion_models/flux2_dev_fp8mixed.safetensors  (FLUX.2 [dev], Comfy-Org/flux2-dev)
- text_encoders/mistral_3_small_flux2_fp8.safetensors  (or the _bf16 file: pick it in Load CLIP,
  type flux2)
- vae/flux2-vae.safetensors
No MUSAR weights: MUSAR Route References only routes attention between FLUX.2's own reference
images (ReferenceLatent).

REFERENCES
Each MUSAR Example Image -> scale to ~1 MP -> VAE Encode -> ReferenceLatent (chain one per
reference; up to 16 are routed). For your own pictures replace an example node with Load Image.
MUSAR Reference Label n names the n-th ReferenceLatent of the chain in the routing legend.

ROUTING
Static routing: references never attend to each other. Dynamic routing: every image region
attends to one reference (see the overlay). Prompt <-> reference attention is kept [chosen].
{extra}
HEADLESS
python -m musar_run workflows/{name}.json --models /path/to/ComfyUI/models
(--tiny runs the same graph on random FLUX.2-architecture stand-ins: a pipeline check only)
"""
KONTEXT_NOTE = """MODEL FILES (ComfyUI/models/...)
- diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors  (FLUX.1 Kontext [dev])
- text_encoders/clip_l.safetensors and text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors
  (DualCLIPLoader, type flux)
- vae/ae.safetensors (the FLUX.1 VAE)
No MUSAR weights: MUSAR Route References only routes attention between Kontext's reference
images (ReferenceLatent).

REFERENCES
Each MUSAR Example Image -> scale to ~1 MP -> VAE Encode -> ReferenceLatent (chain one per
reference). FluxKontextMultiReferenceLatentMethod picks how the references are placed
(offset / index / uxo): every method is routed the same way.
{extra}
HEADLESS
python -m musar_run workflows/{name}.json --models /path/to/ComfyUI/models
(--tiny runs the same graph on random stand-ins: a pipeline check only)
"""
QWEN_NOTE = """MODEL FILES (ComfyUI/models/...)
- diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors (Qwen-Image-Edit-2509) or
  qwen_image_edit_2511_bf16.safetensors (2511: its timestep-zero references are recognised
  from the file; ComfyUI 0.33 or newer)
- text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors  (Load CLIP, type qwen_image)
- vae/qwen_image_vae.safetensors
No MUSAR weights: MUSAR Route References only routes attention between the model's own
reference images.

PICTURES AND REFERENCES
TextEncodeQwenImageEditPlus puts each picture into the prompt ("Picture 1: ...", its vision
tokens). The references themselves come from the chain below it: each picture -> scale ->
VAE Encode -> ReferenceLatent, in the same order (reference n = picture n). Leave the text
node's vae input empty, so the references are not added twice; the chain lets you choose
their size (the text node would always make them ~1 MP).
The pictures' vision tokens stay with the prompt: the language model has already mixed every
picture into every later prompt token, so no prompt token belongs to one picture alone.

ROUTING
Static routing: references never attend to each other. Dynamic routing: every image region
attends to one reference. MUSAR Reference Label strength < 1 for a reference that dominates.

HEADLESS
python -m musar_run workflows/{name}.json --models /path/to/ComfyUI/models
(--tiny runs the same graph on random Qwen-Image stand-ins: a pipeline check only)
"""
KLEIN_NOTE = """MODEL FILES (ComfyUI/models/...)  -  ComfyUI 0.33 or newer
- diffusion_models/flux-2-klein-4b.safetensors (or the 9B file)
- text_encoders/qwen_3_4b.safetensors (9B: qwen_3_8b.safetensors)  (Load CLIP, type flux2)
- vae/flux2-vae.safetensors
No MUSAR weights: MUSAR Route References only routes attention between klein's own reference
images (ReferenceLatent).

REFERENCES
Each MUSAR Example Image -> scale -> VAE Encode -> ReferenceLatent (chain one per reference).
The distilled klein samples in 4 steps at CFG 1 (the base model: more steps, CFG > 1).

HEADLESS
python -m musar_run workflows/{name}.json --models /path/to/ComfyUI/models
(--tiny runs the same graph on random FLUX.2 [klein] stand-ins: a pipeline check only)
"""
AB_EXTRA = """
A/B COMPARISON (routed vs unrouted)
Both samplers share the noise (one RandomNoise) and the conditioning; the top one samples the
stock MODEL, the bottom one the routed MODEL. Compare the two saved images
(musar_flux2_ab_unrouted_*, musar_flux2_ab_routed_*); change the seed for more pairs.
"""
REGION_EXTRA = """
LAYOUT REGIONS
The layout picture (musar_layout_two_regions.png) holds the regions: red = reference 1, blue =
reference 2 (Convert Image to Mask by channel). MUSAR Layout Region 'hard': tokens inside are
routed only to that reference; between the regions the dynamic route decides. A region needs
the image's shape (any resolution). Paint your own layout, or use any MASK.
"""


def draw_layout():
    """1024 x 1024 layout: red region (left), blue region (right), a black gap between."""
    image = Image.new("RGB", (1024, 1024), (0, 0, 0))
    d = ImageDraw.Draw(image)
    d.rectangle((40, 200, 460, 940), fill=(255, 0, 0))
    d.rectangle((564, 300, 984, 940), fill=(0, 0, 255))
    return image


def _references(b, demo, images, captions, vae, start_id, x=0, y=480, labels=True):
    """Example image -> ~1 MP -> VAE Encode per reference; Reference Labels. Returns
    (latent node ids, last label id)."""
    latents, label = [], None
    for i, image in enumerate(images):
        base = start_id + 10 * i
        b.add(base, "MUSAR_ExampleImage", (x, y + 330 * i), {"image": image},
              title=f"Reference {i + 1} (example)", size=(315, 310))
        b.add(base + 1, "ImageScaleToMaxDimension", (x + 340, y + 330 * i),
              {"upscale_method": "lanczos", "largest_size": 1024}, {"image": (base, 0)},
              title="Scale to 1024 px (longest side)")
        b.add(base + 2, "VAEEncode", (x + 340, y + 330 * i + 110), {}, {"pixels": (base + 1, 0), "vae": vae})
        latents.append(base + 2)
        if labels:
            links = {} if label is None else {"labels": (label, 0)}
            b.add(base + 3, "MUSAR_ReferenceLabel", (x + 340, y + 330 * i + 190),
                  {"reference": i + 1, "caption": captions[i], "color": ""}, links,
                  title=f"MUSAR Reference Label {i + 1}", size=(320, 130))
            label = base + 3
    return latents, label


def _chain(b, text_node, latents, x, y):
    previous = text_node
    for i, latent in enumerate(latents):
        b.add(60 + i, "ReferenceLatent", (x, y + 60 * i), {}, {"conditioning": (previous, 0),
                                                               "latent": (latent, 0)},
              title=f"ReferenceLatent {i + 1}")
        previous = 60 + i
    return previous


def _outputs(b, base, name, decode_from, vae, routing, x, y, suffix="", preview=True):
    """VAE Decode -> Save Image [+ MUSAR Routing Preview -> Save Image], node ids base..base+3."""
    b.add(base, "VAEDecode", (x, y), {}, {"samples": decode_from, "vae": vae})
    b.add(base + 1, "SaveImage", (x + 360, y), {"filename_prefix": f"{name}{suffix}"},
          {"images": (base, 0)}, size=(420, 460))
    if preview:
        b.add(base + 2, "MUSAR_RoutingPreview", (x, y + 120), {"step": -1, "opacity": 0.5},
              {"routing": routing, "images": (base, 0)}, size=(315, 300))
        b.add(base + 3, "SaveImage", (x + 800, y), {"filename_prefix": f"{name}_routing"},
              {"images": (base + 2, 0)}, title="Save routing overlay", size=(420, 460))


def build_flux2(demo, info, name, ab=False):
    b = demo.Builder(info)
    images = ["musar_red_mug.png", "musar_yellow_duck.png"]
    captions = [demo.IMAGES[i][1] for i in images]
    b.note(1, (-470, 0), (440, 700), FLUX2_NOTE.format(name=name, extra=AB_EXTRA if ab else ""))
    b.add(2, "UNETLoader", (0, 0), {"unet_name": "flux2_dev_fp8mixed.safetensors", "weight_dtype": "default"})
    b.add(3, "CLIPLoader", (0, 130), {"clip_name": "mistral_3_small_flux2_fp8.safetensors",
                                      "type": "flux2", "device": "default"})
    b.add(4, "VAELoader", (0, 300), {"vae_name": "flux2-vae.safetensors"})
    latents, label = _references(b, demo, images, captions, (4, 0), 20)
    prompt = (f"The {captions[0][2:]} from image 1 and the {captions[1][2:]} from image 2 stand "
              "side by side on a sunlit kitchen table, photo.")
    b.add(5, "CLIPTextEncode", (780, 420), {"text": prompt}, {"clip": (3, 0)}, size=(420, 200))
    last = _chain(b, 5, latents, 780, 660)
    b.add(7, "FluxGuidance", (780, 800), {"guidance": 4.0}, {"conditioning": (last, 0)},
          title="FluxGuidance")
    b.add(10, "MUSAR_RouteReferences", (380, 0), {}, {"model": (2, 0), "labels": (label, 0)},
          size=(360, 400))
    b.add(11, "RandomNoise", (1240, 0), {"noise_seed": 42}, title="RandomNoise (shared)" if ab else "RandomNoise")
    b.add(12, "KSamplerSelect", (1240, 110), {"sampler_name": "euler"}, title="KSamplerSelect")
    b.add(13, "Flux2Scheduler", (1240, 200), {"steps": 20, "width": 1024, "height": 1024},
          title="Flux2Scheduler")
    b.add(14, "EmptyFlux2LatentImage", (1240, 340), {"width": 1024, "height": 1024, "batch_size": 1})
    runs = [("_unrouted", (2, 0), 600), ("_routed", (10, 0), 1100)] if ab else [("", (10, 0), 600)]
    for k, (suffix, model, y) in enumerate(runs):
        what = suffix.strip("_") or "routed"
        b.add(15 + 2 * k, "BasicGuider", (1240, y - 120), {}, {"model": model, "conditioning": (7, 0)},
              title=f"BasicGuider ({what})")
        b.add(16 + 2 * k, "SamplerCustomAdvanced", (1240, y), {}, {
            "noise": (11, 0), "guider": (15 + 2 * k, 0), "sampler": (12, 0), "sigmas": (13, 0),
            "latent_image": (14, 0)}, size=(315, 330), title=f"SamplerCustomAdvanced ({what})")
        _outputs(b, 80 + 4 * k, name.replace("_references_ab", "_ab"), (16 + 2 * k, 0), (4, 0),
                 (10, 1), 1600, y, suffix, preview=suffix != "_unrouted")
    b.group("Models", [2, 3, 4, 10], "#3f789e")
    return b.workflow()


def build_kontext(demo, info, name, regions=False):
    b = demo.Builder(info)
    images = ["musar_green_cactus.png", "musar_blue_teapot.png"]
    captions = [demo.IMAGES[i][1] for i in images]
    b.note(1, (-470, 0), (440, 700), KONTEXT_NOTE.format(name=name, extra=REGION_EXTRA if regions else ""))
    b.add(2, "UNETLoader", (0, 0), {"unet_name": "flux1-dev-kontext_fp8_scaled.safetensors",
                                    "weight_dtype": "default"})
    b.add(3, "DualCLIPLoader", (0, 130), {"clip_name1": "clip_l.safetensors",
                                          "clip_name2": "t5xxl_fp8_e4m3fn_scaled.safetensors", "type": "flux"})
    b.add(4, "VAELoader", (0, 300), {"vae_name": "ae.safetensors"})
    latents, label = _references(b, demo, images, captions, (4, 0), 20, labels=not regions)
    if regions:
        label = _region_labels(b, captions)
    prompt = (f"The {captions[0][2:]} from the first image and the {captions[1][2:]} from the "
              "second image together on a garden table, photo.")
    b.add(5, "CLIPTextEncode", (780, 420), {"text": prompt}, {"clip": (3, 0)}, size=(420, 200))
    last = _chain(b, 5, latents, 780, 660)
    b.add(6, "FluxKontextMultiReferenceLatentMethod", (780, 800),
          {"reference_latents_method": "offset"}, {"conditioning": (last, 0)},
          title="FluxKontextMultiReferenceLatentMethod")
    b.add(7, "FluxGuidance", (780, 900), {"guidance": 2.5}, {"conditioning": (6, 0)},
          title="FluxGuidance")
    b.add(8, "ConditioningZeroOut", (780, 1000), {}, {"conditioning": (5, 0)},
          title="Negative (unused at cfg 1)")
    b.add(10, "MUSAR_RouteReferences", (380, 0), {}, {"model": (2, 0), "labels": (label, 0)},
          size=(360, 400))
    b.add(14, "EmptySD3LatentImage", (1240, 560), {"width": 1024, "height": 1024, "batch_size": 1},
          title="EmptySD3LatentImage")
    b.add(16, "KSampler", (1240, 0), {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
                                      "scheduler": "simple", "denoise": 1.0},
          {"model": (10, 0), "positive": (7, 0), "negative": (8, 0), "latent_image": (14, 0)},
          size=(315, 480))
    _outputs(b, 80, name, (16, 0), (4, 0), (10, 1), 1600, 600)
    b.group("Models", [2, 3, 4, 10], "#3f789e")
    return b.workflow()


def build_qwen(demo, info, name):
    b = demo.Builder(info)
    images = ["musar_red_mug.png", "musar_yellow_duck.png", "musar_green_cactus.png"]
    captions = [demo.IMAGES[i][1] for i in images]
    b.note(1, (-470, 0), (440, 760), QWEN_NOTE.format(name=name))
    b.add(2, "UNETLoader", (0, 0), {"unet_name": "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                                    "weight_dtype": "default"})
    b.add(3, "CLIPLoader", (0, 130), {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                      "type": "qwen_image", "device": "default"})
    b.add(4, "VAELoader", (0, 300), {"vae_name": "qwen_image_vae.safetensors"})
    latents, label = _references(b, demo, images, captions, (4, 0), 20)
    prompt = (f"Picture 1's {captions[0][2:]}, picture 2's {captions[1][2:]} and picture 3's "
              f"{captions[2][2:]} together on a wooden table, photo.")
    b.add(5, "TextEncodeQwenImageEditPlus", (780, 420), {"prompt": prompt},
          {"clip": (3, 0), **{f"image{i + 1}": (20 + 10 * i, 0) for i in range(3)}},
          title="TextEncodeQwenImageEditPlus (pictures in the prompt)", size=(420, 240))
    last = _chain(b, 5, latents, 780, 700)
    b.add(8, "TextEncodeQwenImageEditPlus", (780, 920), {"prompt": ""}, {"clip": (3, 0)},
          title="Negative", size=(420, 160))
    b.add(10, "MUSAR_RouteReferences", (380, 0), {}, {"model": (2, 0), "labels": (label, 0)},
          size=(360, 400))
    b.add(14, "EmptySD3LatentImage", (1240, 560), {"width": 1024, "height": 1024, "batch_size": 1},
          title="EmptySD3LatentImage")
    b.add(16, "KSampler", (1240, 0), {"seed": 42, "steps": 20, "cfg": 2.5, "sampler_name": "euler",
                                      "scheduler": "simple", "denoise": 1.0},
          {"model": (10, 0), "positive": (last, 0), "negative": (8, 0), "latent_image": (14, 0)},
          size=(315, 480))
    _outputs(b, 80, name, (16, 0), (4, 0), (10, 1), 1600, 600)
    b.group("Models", [2, 3, 4, 10], "#3f789e")
    return b.workflow()


def build_klein(demo, info, name):
    b = demo.Builder(info)
    images = ["musar_blue_teapot.png", "musar_yellow_duck.png"]
    captions = [demo.IMAGES[i][1] for i in images]
    b.note(1, (-470, 0), (440, 560), KLEIN_NOTE.format(name=name))
    b.add(2, "UNETLoader", (0, 0), {"unet_name": "flux-2-klein-4b.safetensors", "weight_dtype": "default"})
    b.add(3, "CLIPLoader", (0, 130), {"clip_name": "qwen_3_4b.safetensors", "type": "flux2",
                                      "device": "default"})
    b.add(4, "VAELoader", (0, 300), {"vae_name": "flux2-vae.safetensors"})
    latents, label = _references(b, demo, images, captions, (4, 0), 20)
    prompt = (f"The {captions[0][2:]} from image 1 and the {captions[1][2:]} from image 2 on a "
              "window sill in the morning sun, photo.")
    b.add(5, "CLIPTextEncode", (780, 420), {"text": prompt}, {"clip": (3, 0)}, size=(420, 200))
    last = _chain(b, 5, latents, 780, 660)
    b.add(10, "MUSAR_RouteReferences", (380, 0), {}, {"model": (2, 0), "labels": (label, 0)},
          size=(360, 400))
    b.add(11, "RandomNoise", (1240, 0), {"noise_seed": 42}, title="RandomNoise")
    b.add(12, "KSamplerSelect", (1240, 110), {"sampler_name": "euler"}, title="KSamplerSelect")
    b.add(13, "Flux2Scheduler", (1240, 200), {"steps": 4, "width": 1024, "height": 1024},
          title="Flux2Scheduler")
    b.add(14, "EmptyFlux2LatentImage", (1240, 340), {"width": 1024, "height": 1024, "batch_size": 1})
    b.add(15, "BasicGuider", (1240, 480), {}, {"model": (10, 0), "conditioning": (last, 0)},
          title="BasicGuider")
    b.add(16, "SamplerCustomAdvanced", (1240, 600), {}, {
        "noise": (11, 0), "guider": (15, 0), "sampler": (12, 0), "sigmas": (13, 0),
        "latent_image": (14, 0)}, size=(315, 330), title="SamplerCustomAdvanced")
    _outputs(b, 80, name, (16, 0), (4, 0), (10, 1), 1600, 600)
    b.group("Models", [2, 3, 4, 10], "#3f789e")
    return b.workflow()


def _region_labels(b, captions):
    """Layout picture -> one mask per colour -> hard MUSAR Layout Region -> Reference Label."""
    b.add(40, "MUSAR_ExampleImage", (-470, 760), {"image": LAYOUT}, title="Layout (red: 1, blue: 2)",
          size=(315, 310))
    label = None
    for i, channel in enumerate(("red", "blue")):
        b.add(41 + 3 * i, "ImageToMask", (-130, 760 + 200 * i), {"channel": channel}, {"image": (40, 0)})
        b.add(42 + 3 * i, "MUSAR_LayoutRegion", (-130, 840 + 200 * i), {"mode": "hard", "strength": 0.5},
              {"mask": (41 + 3 * i, 0)})
        links = {"region": (42 + 3 * i, 0), **({} if label is None else {"labels": (label, 0)})}
        b.add(43 + 3 * i, "MUSAR_ReferenceLabel", (340, 1160 + 160 * i),
              {"reference": i + 1, "caption": captions[i], "color": ""}, links,
              title=f"MUSAR Reference Label {i + 1}", size=(320, 150))
        label = 43 + 3 * i
    return label


def workflows(demo, info) -> dict:
    """name -> (UI workflow, thumbnail picture names)."""
    return {
        "musar_flux2_references": (build_flux2(demo, info, "musar_flux2_references"),
                                   ["musar_red_mug.png", "musar_yellow_duck.png"]),
        "musar_flux2_references_ab": (build_flux2(demo, info, "musar_flux2_references_ab", ab=True),
                                      ["musar_red_mug.png", "musar_yellow_duck.png"]),
        "musar_kontext_references": (build_kontext(demo, info, "musar_kontext_references"),
                                     ["musar_green_cactus.png", "musar_blue_teapot.png"]),
        "musar_regions": (build_kontext(demo, info, "musar_regions", regions=True),
                          ["musar_green_cactus.png", "musar_blue_teapot.png"]),
        "musar_qwen_edit_references": (build_qwen(demo, info, "musar_qwen_edit_references"),
                                       ["musar_red_mug.png", "musar_yellow_duck.png", "musar_green_cactus.png"]),
        "musar_klein_references": (build_klein(demo, info, "musar_klein_references"),
                                   ["musar_blue_teapot.png", "musar_yellow_duck.png"]),
    }
