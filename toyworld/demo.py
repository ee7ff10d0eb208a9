"""``make demo`` on the toy world.

``python -m musar_run WORKFLOW --toy`` runs a shipped workflow with its model loaders swapped for
MUSAR_ToyWorldLoader (``musar_run.edits.STANDINS["toy"]``); :func:`prepare` then gives the graph
what the toy model knows: every MUSAR Subject (in chain order) gets a held-out identity - its
caption names the pattern only, its image is the block rendered alone in another slot on another
background - the positive prompt names each subject's slot and pattern but no colour, so the
colours can only come from the references; the negative prompt is the empty prompt the model was
trained with, samplers use CFG ``graph.SAMPLING["cfg"]`` and MUSAR Load Dual LoRA loads the
static-trained toy LoRA. ``--set`` overrides apply afterwards. Pure: API prompt + input folder in,
API prompt out (the references are written as PNG files).

``python -m toyworld.demo [OUTPUT]`` composes the figure of a ``make demo`` run: references | the
image without routing (the dense-trained LoRA, routing off) | with static + dynamic routing | the
route overlay, upscaled so the cells are visible (``OUTPUT/toy_demo.png``; ``--docs`` also writes
docs/images/toy_demo.png).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

# Held-out identities (never seen in training) with different patterns and no colour in common
DEMO_SUBJECTS = ("red and black striped block", "yellow and white columned block",
                 "orange and pink plain block", "cyan and purple checkered block")
DEMO_SLOTS = ("top left", "bottom right", "top right", "bottom left")
REFERENCES = (("bottom right", "sand"), ("top left", "slate"), ("bottom left", "sand"), ("top right", "slate"))
DEMO_BACKGROUND = "grey"
LORA_FILES = {"routing": "toy_lora_static.safetensors", "no routing": "toy_lora_dense.safetensors"}
UPSCALE = 3


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


def _feeding(prompt: dict, port: str, kinds: tuple[str, ...]) -> list[str]:
    """Nodes of ``kinds`` that feed a sampler's ``port`` (positive / negative) through any nodes."""
    found, stack, seen = [], [n["inputs"][port][0] for n in prompt.values()
                              if isinstance(n["inputs"].get(port), list)], set()
    while stack:
        key = stack.pop()
        if key in seen or key not in prompt:
            continue
        seen.add(key)
        if prompt[key]["class_type"] in kinds:
            found.append(key)
            continue
        stack += [v[0] for v in prompt[key]["inputs"].values() if isinstance(v, list) and len(v) == 2
                  and isinstance(v[0], str)]
    return found


def _pack(name: str):
    """A pack module as ComfyUI loaded it (the runner has loaded the pack)."""
    from musar_run import runtime

    return runtime.pack_module(runtime.load_pack(), name)


def select_lora(prompt: dict, lora: str) -> None:
    """MUSAR Load Dual LoRA nodes load the toy LoRA (the toy weights folder becomes a loras folder);
    without that file they are bypassed (their consumers take the MODEL they were given)."""
    import folder_paths

    folder = _pack("nodes.testing.toy").weights_dir()
    loaders = [k for k, n in prompt.items() if n["class_type"] == "MUSAR_LoadDualLoRA"]
    if (folder / lora).is_file():
        folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
        for key in loaders:
            prompt[key]["inputs"]["lora_name"] = lora
        return
    print(f"toy demo: no {lora} in {folder}: MUSAR Load Dual LoRA bypassed", file=sys.stderr)
    for key in loaders:
        source = prompt.pop(key)["inputs"]["model"]
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if value == [key, 0]:
                    node["inputs"][name] = source


def demo_placed(W, n: int) -> list:
    return [W.Placed(W.Identity.parse(DEMO_SUBJECTS[i % 4]), DEMO_SLOTS[i % 4]) for i in range(min(n, 4))]


def reference_image(W, i: int):
    """Subject i's reference: its block alone in another slot on another background."""
    slot, background = REFERENCES[i % 4]
    return W.render([W.Placed(W.Identity.parse(DEMO_SUBJECTS[i % 4]), slot)], background)


def prepare(prompt: dict, input_dir: Path) -> dict:
    prompt = copy.deepcopy(prompt)
    select_lora(prompt, LORA_FILES["routing"])
    W, graph = _pack("toyworld.world"), _pack("toyworld.graph")
    chain = _subject_chain(prompt)
    for i, key in enumerate(chain[:4]):
        node = prompt[key]["inputs"]
        node["caption"] = W.Identity.parse(DEMO_SUBJECTS[i]).item
        image = node.get("image")
        if isinstance(image, list) and prompt.get(image[0], {}).get("class_type") in ("LoadImage", "MUSAR_ExampleImage"):
            name = f"toy_{DEMO_SUBJECTS[i].replace(' ', '_')}.png"
            reference_image(W, i).save(Path(input_dir) / name)
            prompt[image[0]].update(class_type="LoadImage", inputs={"image": name})
    positive = _feeding(prompt, "positive", ("CLIPTextEncode",))
    for key in positive:
        prompt[key]["inputs"]["text"] = W.scene_caption(demo_placed(W, len(chain)), DEMO_BACKGROUND, False)
    for key in _feeding(prompt, "negative", ("ConditioningZeroOut", "CLIPTextEncode")):
        if positive:  # the toy model's unconditional prompt is the empty one it was trained with
            prompt[key] = {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative (empty prompt)"},
                           "inputs": {"text": "", "clip": prompt[positive[0]]["inputs"]["clip"]}}
    for node in prompt.values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            node["inputs"]["cfg"] = graph.SAMPLING["cfg"]
    return prompt


def _newest(folder: Path, pattern: str) -> Path:
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no {pattern} in {folder}: run `make demo` first")
    return files[-1]


def demo_figure(output: Path, n_subjects: int = 2):
    """references | no routing | routing | route of the newest ``make demo`` run in ``output``
    (the run without routing in ``output/no_routing``)."""
    from PIL import Image

    from . import world as W
    from .figures import grid

    images = [reference_image(W, i) for i in range(n_subjects)]
    images += [Image.open(_newest(output / "no_routing", "musar_two_subjects_[0-9]*.png")),
               Image.open(_newest(output, "musar_two_subjects_[0-9]*.png")),
               Image.open(_newest(output, "musar_two_subjects_routing_*.png"))]
    header = [f"reference {i + 1}" for i in range(n_subjects)] + ["no routing", "routing", "route"]
    return grid([images], header, scale=UPSCALE)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    args = [a for a in sys.argv[1:] if a != "--docs"]
    out = Path(args[0]) if args else root / "output"
    figure = demo_figure(out)
    targets = [out / "toy_demo.png"] + ([root / "docs" / "images" / "toy_demo.png"] if "--docs" in sys.argv else [])
    for path in targets:
        figure.save(path, optimize=True)
        print(path)
