"""Regenerate the shipped demo material: reference images, UI workflows and their API copies.

    .venv/bin/python scripts/make_demo_assets.py            # everything
    .venv/bin/python scripts/make_demo_assets.py --check    # exit 1 if a committed file differs

- ``workflows/assets/musar_*.png``: four flat, PIL-drawn subjects (our own drawings, 512x512).
- ``workflows/*.json``: UI-format workflows (frontend format 0.4), ``workflows/*.jpg`` their
  Templates-browser thumbnails. Widget values are laid out from
  the node definitions of the real ComfyUI runtime (``/object_info``, built in process), so they
  follow each node's input order.
- ``workflows/api/*.json``: the same graphs converted by ``musar_run.convert`` (a tier-2 test
  checks that the committed copies equal the conversion), also for shipped UI workflows this
  script does not build (they are converted as they are).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
ASSETS = WORKFLOWS / "assets"
API = WORKFLOWS / "api"
SIZE = 512
TEMPLATE = ("An undivided, seamless, and harmonious picture with {count} objects. in the {scene} "
            "scene, {subjects} are placed together.")

# ---------------------------------------------------------------------------------------------
# reference images


def _canvas(background):
    image = Image.new("RGB", (SIZE, SIZE), background)
    return image, ImageDraw.Draw(image)


def _shadow(draw, box):
    draw.ellipse(box, fill=(200, 200, 196))


def draw_red_mug():
    image, d = _canvas((236, 236, 232))
    _shadow(d, (120, 400, 400, 450))
    d.ellipse((330, 200, 440, 330), outline=(190, 30, 35), width=26)
    d.rounded_rectangle((130, 140, 360, 420), radius=30, fill=(205, 38, 42))
    d.ellipse((130, 118, 360, 170), fill=(150, 20, 25))
    d.ellipse((145, 126, 345, 162), fill=(90, 45, 20))
    d.rectangle((165, 200, 190, 380), fill=(232, 90, 90))
    return image


def draw_yellow_duck():
    image, d = _canvas((210, 230, 245))
    _shadow(d, (100, 410, 420, 460))
    d.ellipse((90, 230, 420, 430), fill=(250, 205, 30))
    d.polygon([(400, 260), (470, 220), (430, 320)], fill=(250, 205, 30))
    d.ellipse((120, 90, 300, 270), fill=(250, 210, 40))
    d.polygon([(120, 175), (40, 195), (120, 215)], fill=(245, 120, 20))
    d.ellipse((175, 140, 205, 170), fill=(20, 20, 20))
    d.arc((210, 240, 380, 350), 20, 160, fill=(225, 170, 20), width=10)
    return image


def draw_green_cactus():
    image, d = _canvas((245, 232, 210))
    _shadow(d, (140, 440, 380, 480))
    d.rounded_rectangle((215, 70, 300, 340), radius=40, fill=(60, 150, 70))
    d.rounded_rectangle((130, 150, 190, 260), radius=28, fill=(60, 150, 70))
    d.rectangle((160, 230, 230, 262), fill=(60, 150, 70))
    d.rounded_rectangle((325, 120, 385, 230), radius=28, fill=(60, 150, 70))
    d.rectangle((290, 200, 355, 232), fill=(60, 150, 70))
    for y in range(100, 330, 40):
        d.line((245, y, 270, y + 12), fill=(200, 230, 190), width=4)
    d.polygon([(150, 320), (370, 320), (340, 460), (180, 460)], fill=(196, 100, 60))
    d.rectangle((140, 300, 380, 335), fill=(176, 86, 50))
    return image


def draw_blue_teapot():
    image, d = _canvas((238, 238, 238))
    _shadow(d, (100, 410, 420, 460))
    d.polygon([(110, 300), (40, 200), (60, 190), (150, 270)], fill=(40, 90, 200))
    d.ellipse((350, 210, 450, 350), outline=(30, 70, 170), width=24)
    d.ellipse((110, 180, 400, 430), fill=(45, 100, 215))
    d.ellipse((190, 150, 320, 200), fill=(30, 70, 170))
    d.ellipse((235, 115, 275, 155), fill=(30, 70, 170))
    d.arc((140, 220, 370, 400), 160, 230, fill=(140, 180, 250), width=12)
    return image


IMAGES = {
    "musar_red_mug.png": (draw_red_mug, "a red ceramic mug"),
    "musar_yellow_duck.png": (draw_yellow_duck, "a yellow rubber duck"),
    "musar_green_cactus.png": (draw_green_cactus, "a green cactus in a terracotta pot"),
    "musar_blue_teapot.png": (draw_blue_teapot, "a blue teapot"),
}


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def thumbnail(images: list[str]) -> bytes:
    """Templates-browser thumbnail (``<workflow>.jpg``): the workflow's reference drawings."""
    side = 2 if len(images) > 1 else 1
    cell = SIZE // side
    sheet = Image.new("RGB", (SIZE, SIZE), (250, 250, 250))
    top = (SIZE - cell * ((len(images) + side - 1) // side)) // 2
    for i, name in enumerate(images):
        tile = IMAGES[name][0]().resize((cell - 8, cell - 8), Image.LANCZOS)
        sheet.paste(tile, ((i % side) * cell + 4, top + (i // side) * cell + 4))
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# UI workflows

NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}
MODELS_NOTE = """MODEL FILES (ComfyUI/models/...)
- diffusion_models/{unet}
  {unet_hint}
- text_encoders/clip_l.safetensors and text_encoders/t5xxl_fp16.safetensors
  (or t5xxl_fp8_e4m3fn.safetensors: pick it in DualCLIPLoader), from comfyanonymous/flux_text_encoders
- vae/ae.safetensors (FLUX.1 VAE, black-forest-labs)
- loras/{lora}
  {lora_hint}

REFERENCE IMAGES
The MUSAR Example Image nodes load the pack's demo drawings from ComfyUI-MUSAR/workflows/assets
(nothing to copy). For your own pictures replace each one with a Load Image node (one subject
per picture, a plain background works best) and connect its IMAGE to the MUSAR Subject node.

PROMPT
MUSAR-Gen template: "An undivided, seamless, and harmonious picture with two objects. in the
<scene> scene, <subject A> and <subject B> are placed together." (with more subjects: "four
objects", "A, B, C and D"). Keep each Subject caption short and the same words as in the prompt.

HEADLESS
python -m musar_run workflows/{name}.json --models /path/to/ComfyUI/models
(see docs/RUNNING.md; --tiny runs the same graph on random stand-in models: pipeline check only)
"""
DEV_UNET = ("flux1-dev.safetensors", "FLUX.1-dev (black-forest-labs). An fp8 file such as "
            "flux1-dev-fp8-e4m3fn.safetensors works too:\n  select it in Load Diffusion Model, or "
            "keep the fp16 file and set weight_dtype to fp8_e4m3fn to save memory.")
MUSAR_LORA = ("musar_dual_lora.safetensors", "a MUSAR dual-branch LoRA trained with this pack (the "
              "paper's authors released no weights).\n  No MUSAR LoRA yet? Use "
              "musar_omnicontrol_training_free.json.")
OMNI_UNET = ("flux1-schnell.safetensors", "FLUX.1-schnell (black-forest-labs): OminiControl's "
             "subject_512 LoRA was released for schnell\n  (8 steps, cfg 1, no FluxGuidance).")
OMNI_LORA = ("ominicontrol_subject_512.safetensors", "OminiControl's subject LoRA: download "
             "omini/subject_512.safetensors from Yuanshi/OminiControl\n  and save it under this "
             "name. MUSAR_LoadDualLoRA reads it as the subject branch (strength_noisy 0).")


def _default(info, name, kind, options):
    if "default" in options:
        return options["default"]
    choices = options.get("options") or next(
        (s[0] for sec in info["input"].values() for n, s in sec.items() if n == name), None)
    if kind == "COMBO" and isinstance(choices, list) and choices:
        return choices[0]
    raise KeyError(f"{info['name']}.{name} has no default: give a value")


class Builder:
    """Lays out UI-format nodes and links from node definitions (object_info)."""

    def __init__(self, object_info: dict):
        from musar_run import convert

        self.convert = convert
        self.info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []
        self._by_id: dict[int, dict] = {}

    def note(self, node_id, pos, size, text):
        node = {"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text], **NOTE_COLORS}
        self.nodes.append(node)
        self._by_id[node_id] = node

    def add(self, node_id, kind, pos, widgets=None, links=None, title=None, size=None):
        info = self.info[kind]
        widgets = dict(widgets or {})
        specs = list(self.convert._input_specs(info))
        sockets, widget_names = [], []
        for name, typ, opts in specs:
            if typ in self.convert.WIDGET_TYPES and not opts.get("forceInput"):
                widget_names.append((name, typ))
            else:
                sockets.append((name, typ))
        values, previous = [], None
        spec_of = {n: (t, o) for n, t, o in specs}
        for slot in self.convert.widget_slots(info):
            if slot is None:
                upload = any(spec_of[previous][1].get(f) for f in self.convert.UPLOAD_FLAGS)
                values.append("image" if upload else "fixed")
                continue
            previous = slot
            if slot not in widgets:
                widgets[slot] = _default(info, slot, *spec_of[slot])
            values.append(widgets.pop(slot))
        if widgets:
            raise KeyError(f"{kind}: unknown widgets {sorted(widgets)}")
        inputs = [{"name": n, "localized_name": n, "type": t, "link": None} for n, t in sockets]
        inputs += [{"name": n, "localized_name": n, "type": t, "widget": {"name": n}, "link": None}
                   for n, t in widget_names]
        outputs = [{"name": name, "localized_name": name, "type": typ, "links": [], "slot_index": i}
                   for i, (typ, name) in enumerate(zip(info["output"], info["output_name"]))]
        rows = max(len(sockets), len(outputs)) + len(widget_names)
        node = {"id": node_id, "type": kind, "pos": list(pos),
                "size": list(size or (315, 40 + 24 * rows)), "flags": {}, "order": 0, "mode": 0,
                "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": kind}, "widgets_values": values}
        # Always a title: an untitled node's API title is the display name of whichever ComfyUI
        # converts it, and display names change between versions (DualCLIPLoader 0.3.75 / 0.33).
        node["title"] = title or info.get("display_name") or kind
        self.nodes.append(node)
        self._by_id[node_id] = node
        for name, (src, slot) in (links or {}).items():
            self.link(src, slot, node_id, name)
        return node

    def link(self, src, slot, dst, input_name):
        source, target = self._by_id[src], self._by_id[dst]
        index = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == input_name)
        link_id = len(self.links) + 1
        kind = source["outputs"][slot]["type"]
        self.links.append([link_id, src, slot, dst, index, kind])
        source["outputs"][slot]["links"].append(link_id)
        target["inputs"][index]["link"] = link_id

    def group(self, title, ids, color):
        boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in self.nodes if n["id"] in ids]
        x0, y0 = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 60
        x1, y1 = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def workflow(self) -> dict:
        self._set_order()
        return {"last_node_id": max(n["id"] for n in self.nodes),
                "last_link_id": len(self.links), "nodes": sorted(self.nodes, key=lambda n: n["id"]),
                "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": 0.75, "offset": [480, 60]}, "frontendVersion": "1.32.9"},
                "version": 0.4}

    def _set_order(self):
        deps = {n["id"]: {lk[1] for lk in self.links if lk[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(deps):
            ready = sorted(i for i, d in deps.items() if i not in done and d <= set(done))
            done += ready
        for n in self.nodes:
            n["order"] = done.index(n["id"])


def build_musar(info, name, subjects, scene, unet, lora, strengths, sampling, latent, guidance):
    """One MUSAR graph: loaders -> dual LoRA -> subjects -> routing -> stock KSampler -> save."""
    b = Builder(info)
    count = {2: "two", 3: "three", 4: "four"}[len(subjects)]
    captions = [IMAGES[img][1] for img in subjects]
    listed = " and ".join([", ".join(captions[:-1]), captions[-1]])
    prompt = TEMPLATE.format(count=count, scene=scene, subjects=listed)
    b.note(1, (-470, 0), (440, 650), MODELS_NOTE.format(
        unet=unet[0], unet_hint=unet[1], lora=lora[0], lora_hint=lora[1], name=name))
    b.add(2, "UNETLoader", (0, 0), {"unet_name": unet[0], "weight_dtype": "default"})
    b.add(3, "DualCLIPLoader", (0, 130), {"clip_name1": "clip_l.safetensors",
                                          "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"})
    b.add(4, "VAELoader", (0, 300), {"vae_name": "ae.safetensors"})
    b.add(5, "MUSAR_LoadDualLoRA", (380, 0), {"lora_name": lora[0], "strength_noisy": strengths[0],
                                              "strength_subject": strengths[1]}, {"model": (2, 0)})
    previous, subject_ids = None, []
    for i, image in enumerate(subjects):
        y = 480 + 330 * i
        load, subject = 20 + 2 * i, 21 + 2 * i
        b.add(load, "MUSAR_ExampleImage", (0, y), {"image": image},
              title=f"Subject {i + 1} image (example)", size=(315, 310))
        links = {"image": (load, 0), "vae": (4, 0), "clip": (3, 0)}
        if previous is not None:
            links["subjects"] = (previous, 0)
        b.add(subject, "MUSAR_Subject", (380, y), {"caption": captions[i], "crop": "center crop",
                                                   "reference_size": 512}, links,
              title=f"MUSAR Subject {i + 1}", size=(340, 200))
        previous = subject
        subject_ids += [load, subject]
    b.add(6, "CLIPTextEncode", (780, 420), {"text": prompt}, {"clip": (3, 0)},
          title="Prompt (MUSAR-Gen template)", size=(420, 200))
    positive = (6, 0)
    if guidance is not None:
        b.add(7, "FluxGuidance", (780, 660), {"guidance": guidance}, {"conditioning": (6, 0)})
        positive = (7, 0)
    b.add(8, "ConditioningZeroOut", (780, 780), {}, {"conditioning": (6, 0)}, title="Negative (unused at cfg 1)")
    b.add(9, "EmptySD3LatentImage", (780, 880), latent)
    b.add(10, "MUSAR_ApplyRouting", (780, 0), {}, {"model": (5, 0), "subjects": (previous, 0)},
          size=(360, 380))
    b.add(11, "KSampler", (1240, 0), sampling, {"model": (10, 0), "positive": positive,
                                                 "negative": (8, 0), "latent_image": (9, 0)},
          size=(315, 480))
    b.add(12, "VAEDecode", (1240, 520), {}, {"samples": (11, 0), "vae": (4, 0)})
    b.add(13, "SaveImage", (1600, 0), {"filename_prefix": name}, {"images": (12, 0)},
          size=(520, 560))
    b.add(14, "MUSAR_RoutingPreview", (1240, 640), {"step": -1, "opacity": 0.5},
          {"routing": (10, 1), "images": (12, 0)}, size=(315, 300))
    b.add(15, "SaveImage", (1600, 640), {"filename_prefix": f"{name}_routing"}, {"images": (14, 0)},
          title="Save routing overlay", size=(520, 560))
    b.group("Models", [2, 3, 4, 5], "#3f789e")
    b.group("Subjects (chain more MUSAR Subject nodes for more subjects)", subject_ids, "#8A8")
    b.group("Sampling", [11, 12, 13, 14, 15], "#b58b2a")
    return b.workflow()


SUBJECTS = {
    "musar_two_subjects": ["musar_red_mug.png", "musar_yellow_duck.png"],
    "musar_four_subjects": list(IMAGES),
    "musar_omnicontrol_training_free": ["musar_green_cactus.png", "musar_blue_teapot.png"],
}


def workflows(info) -> dict:
    dev_sampling = {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler",
                    "scheduler": "simple", "denoise": 1.0}
    square = {"width": 1024, "height": 1024, "batch_size": 1}
    return {
        "musar_two_subjects": build_musar(
            info, "musar_two_subjects", SUBJECTS["musar_two_subjects"],
            "sunlit kitchen", DEV_UNET, MUSAR_LORA, (1.0, 1.0), dev_sampling, square, 3.5),
        "musar_four_subjects": build_musar(
            info, "musar_four_subjects", SUBJECTS["musar_four_subjects"], "wooden bookshelf", DEV_UNET, MUSAR_LORA,
            (1.0, 1.0), dev_sampling, square, 3.5),
        "musar_omnicontrol_training_free": build_musar(
            info, "musar_omnicontrol_training_free",
            SUBJECTS["musar_omnicontrol_training_free"], "garden picnic", OMNI_UNET,
            OMNI_LORA, (0.0, 1.0), {**dev_sampling, "steps": 8},
            {"width": 512, "height": 512, "batch_size": 1}, None),
    }


def dump(data) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def generated_files() -> dict[Path, bytes]:
    sys.path.append(str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from musar_run import convert, runtime

    runtime.bootstrap(base_dir=Path(tempfile.mkdtemp(prefix="musar-assets-")))
    runtime.load_pack(ROOT)
    info = convert.object_info_in_process()
    import reference_workflows  # the MUSAR Route References workflows (same Builder)

    files = {ASSETS / name: png_bytes(draw()) for name, (draw, _) in IMAGES.items()}
    files[ASSETS / reference_workflows.LAYOUT] = png_bytes(reference_workflows.draw_layout())
    built = {name: (workflow, SUBJECTS[name]) for name, workflow in workflows(info).items()}
    built.update(reference_workflows.workflows(sys.modules[__name__], info))
    for name, (workflow, pictures) in built.items():
        files[WORKFLOWS / f"{name}.json"] = dump(workflow)
        files[WORKFLOWS / f"{name}.jpg"] = thumbnail(pictures)
        files[API / f"{name}.json"] = dump(convert.ui_to_api(workflow, info))
    for path in sorted(WORKFLOWS.glob("*.json")):  # other shipped UI workflows: their API copies
        if path.stem not in built:
            files[API / path.name] = dump(convert.ui_to_api(json.loads(path.read_text()), info))
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    stale = []
    for path, data in generated_files().items():
        if path.is_file() and path.read_bytes() == data:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    for path in stale:
        print(("differs: " if args.check else "wrote: ") + str(path.relative_to(ROOT)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
