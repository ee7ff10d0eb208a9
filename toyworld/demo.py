"""``python -m musar_run WORKFLOW --toy`` (the default of ``make demo``): the shipped workflow on the
trained toy world. The runner swaps the model loaders for MUSAR_ToyWorldLoader and selects the
toy dual LoRA (``musar_run.edits.STANDINS["toy"]``); :func:`prepare` then gives the graph toy
subjects the model knows: every MUSAR Subject (in chain order) gets a held-out toy subject as its
caption and a rendered reference scene as its Load Image file, and the positive prompt becomes
the MUSAR-Gen prompt of those subjects, and samplers use CFG ``TOY_CFG``. ``--set`` overrides
apply afterwards.

Pure: API prompt + input folder in, API prompt out (the references are written as PNG files).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

# Held-out subjects (never seen in training), pairwise different shapes and colours [chosen]
DEMO_SUBJECTS = ("red striped heart", "cyan plain star", "green dotted triangle", "yellow striped circle",
                 "blue plain square", "magenta plain cross")
LORA_FILE = "toy_musar_lora.safetensors"
DEMO_BACKGROUND, REFERENCE_BACKGROUNDS = "grass", ("sand", "wooden floor", "stone tiles", "carpet")
# The toy FLUX is not guidance-distilled (trained with prompt dropout for real CFG), so the
# demo samples with classifier-free guidance like the evaluation does (docs/TOY_WORLD.md).
TOY_CFG = 4.0


def _subject_chain(prompt: dict) -> list[str]:
    """MUSAR_Subject node ids from the first of the chain to the last."""
    subjects = [k for k, n in prompt.items() if n["class_type"] == "MUSAR_Subject"]
    feeds = {n["inputs"]["subjects"][0]: k for k, n in prompt.items()
             if k in subjects and isinstance(n["inputs"].get("subjects"), list)}
    starts = [k for k in subjects if not isinstance(prompt[k]["inputs"].get("subjects"), list)]
    chain = []
    for start in sorted(starts, key=lambda k: (len(k), k)):
        key = start
        while key is not None and key not in chain:
            chain.append(key)
            key = feeds.get(key)
    return chain


def _positive_texts(prompt: dict) -> list[str]:
    """CLIPTextEncode nodes that feed a sampler's positive conditioning (through any nodes)."""
    found, stack, seen = [], [], set()
    for node in prompt.values():
        pos = node["inputs"].get("positive")
        if isinstance(pos, list):
            stack.append(pos[0])
    while stack:
        key = stack.pop()
        if key in seen or key not in prompt:
            continue
        seen.add(key)
        node = prompt[key]
        if node["class_type"] == "CLIPTextEncode":
            found.append(key)
            continue
        stack += [v[0] for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2
                  and isinstance(v[0], str)]
    return found


def _pack(name: str):
    """A pack module as ComfyUI loaded it (the runner has loaded the pack)."""
    from musar_run import runtime

    return importlib.import_module(f"{runtime.load_pack().__name__}.{name}")


def select_lora(prompt: dict) -> None:
    """MUSAR Load Dual LoRA nodes load the toy LoRA (its folder becomes a loras folder)."""
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(_pack("nodes.toy").weights_dir()), is_default=True)
    for node in prompt.values():
        if node["class_type"] == "MUSAR_LoadDualLoRA":
            node["inputs"]["lora_name"] = LORA_FILE


IMAGE_NODES = ("LoadImage", "MUSAR_ExampleImage")  # the shipped workflows use the example node


def reference_image(world, i: int, item: str):
    """Subject i's reference scene (the same pixels :func:`prepare` writes)."""
    return world.render_scene([item], REFERENCE_BACKGROUNDS[i % len(REFERENCE_BACKGROUNDS)], None, 1000 + i)[0]


def prepare(prompt: dict, input_dir: Path) -> dict:
    prompt = copy.deepcopy(prompt)
    select_lora(prompt)
    toy = _pack("toyworld")
    world = toy.World(seed=0, panel=128)
    chain = _subject_chain(prompt)
    items = [DEMO_SUBJECTS[i % len(DEMO_SUBJECTS)] for i in range(len(chain))]
    for i, (key, item) in enumerate(zip(chain, items)):
        node = prompt[key]["inputs"]
        node["caption"] = item
        image = node.get("image")
        if isinstance(image, list) and prompt.get(image[0], {}).get("class_type") in IMAGE_NODES:
            name = f"toy_{item.replace(' ', '_')}.png"
            reference_image(world, i, item).save(Path(input_dir) / name)
            prompt[image[0]].update(class_type="LoadImage", inputs={"image": name})
    for node in prompt.values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            node["inputs"]["cfg"] = TOY_CFG
    if items:
        text = toy.multi_caption([toy.Subject.parse(i) for i in items], DEMO_BACKGROUND)
        for key in _positive_texts(prompt):
            prompt[key]["inputs"]["text"] = text
    return prompt


def demo_figure(output_dir: Path, out: Path, n_subjects: int = 2) -> Path:
    """References | image | routing overlay of the newest ``make demo`` run in ``output_dir``
    (e.g. docs/images/demo_overlay.png)."""
    from .figures import case_row, grid
    from .world import World

    newest = {}
    for kind in ("musar_two_subjects_[0-9]*.png", "musar_two_subjects_routing_*.png"):
        files = sorted(Path(output_dir).glob(kind))
        if not files:
            raise SystemExit(f"no {kind} in {output_dir}: run `make demo` first")
        newest[kind] = files[-1]
    from PIL import Image

    world = World(seed=0, panel=128)
    refs = [reference_image(world, i, DEMO_SUBJECTS[i]) for i in range(n_subjects)]
    row = case_row(refs + [Image.open(p) for p in newest.values()])
    header = [DEMO_SUBJECTS[i] for i in range(n_subjects)] + ["generated", "route"]
    out.parent.mkdir(parents=True, exist_ok=True)
    grid([row], header).save(out, optimize=True)
    return out


if __name__ == "__main__":
    import sys

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    print(demo_figure(Path(sys.argv[1] if len(sys.argv) > 1 else root / "output"),
                      root / "docs" / "images" / "demo_overlay.png"))
