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

``python -m toyworld.demo [OUTPUT] [--docs] [--quick]`` makes the figure of ``make demo``, in one
ComfyUI process: the first six four-subject held-out cases of case seed ``GRID_CASE_SEED`` (fixed
before any was drawn) through the shipped four-subject workflow (``GRID_WORKFLOW``) under
``GRID_CONDITIONS`` - no routing (the dense-trained LoRA, routing off), static routing, and the
workflow as shipped (the static-trained LoRA) - and, when the multi-reference base is in the toy
weights folder, six three-reference cases with MUSAR Route References off, as shipped (static
routing) and with dynamic routing on. Every image is scored by the toy detector; the figure shows the references, each image
with its count of subjects right and the route, and the tally per condition under each panel
(``OUTPUT/toy_demo.png``, numbers in ``OUTPUT/toy_demo.json``; ``--docs`` also copies the figure
to docs/images/toy_demo.png, the README's picture; ``--quick``: one case per panel).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from . import common
from .common import module

# Held-out identities (never seen in training) with different patterns and no colour in common
DEMO_SUBJECTS = ("red and black striped block", "yellow and white columned block",
                 "orange and pink plain block", "cyan and purple checkered block")
DEMO_SLOTS = ("top left", "bottom right", "top right", "bottom left")
REFERENCES = (("bottom right", "sand"), ("top left", "slate"), ("bottom left", "sand"), ("top right", "slate"))
DEMO_BACKGROUND = "grey"
LORA_FILES = {"static": "toy_lora_static.safetensors", "dense": "toy_lora_dense.safetensors"}  # the two arms
UPSCALE = 2


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


def demo_case(n: int) -> dict:
    """The shipped workflow's own toy case (``musar_run --toy``), in the evaluation's case format."""
    return {"id": "demo", "n": min(n, 4), "subjects": list(DEMO_SUBJECTS[:n]), "slots": list(DEMO_SLOTS[:n]),
            "background": DEMO_BACKGROUND, "refs": [list(r) for r in REFERENCES[:n]]}


def demo_placed(W, n: int) -> list:
    return [W.Placed(W.Identity.parse(s), slot) for s, slot in zip(DEMO_SUBJECTS[:n], DEMO_SLOTS[:n])]


def reference_image(W, case: dict, i: int):
    """Subject i's reference: its block alone in another slot on another background."""
    slot, background = case["refs"][i]
    return W.render([W.Placed(W.Identity.parse(case["subjects"][i]), slot)], background)


def prepare(prompt: dict, input_dir: Path) -> dict:
    """``musar_run --toy``: the workflow with the demo's held-out subjects and the static-trained LoRA."""
    prompt = copy.deepcopy(prompt)
    select_lora(prompt, LORA_FILES["static"])
    return for_case(prompt, input_dir, demo_case(len(_subject_chain(prompt))))


def for_case(prompt: dict, input_dir: Path, case: dict, seed: int | None = None) -> dict:
    """The toy edits for one case: its first ``case["n"]`` Subject nodes get its identities (caption
    = the pattern only, image = the block alone on another panel), the positive prompt names each
    subject's slot and pattern, never a colour, the negative is the empty prompt the model was
    trained with, samplers use the toy CFG (and ``seed`` when given)."""
    W, graph = _pack("toyworld.world"), _pack("toyworld.graph")
    chain = _subject_chain(prompt)
    if len(chain) < case["n"]:
        raise SystemExit(f"the workflow has {len(chain)} MUSAR Subject nodes; the case needs {case['n']}")
    for i, key in enumerate(chain[:case["n"]]):
        node = prompt[key]["inputs"]
        node["caption"] = W.Identity.parse(case["subjects"][i]).item
        image = node.get("image")
        if isinstance(image, list) and prompt.get(image[0], {}).get("class_type") in ("LoadImage", "MUSAR_ExampleImage"):
            slot, background = case["refs"][i]
            name = f"toy_{case['subjects'][i]}_{slot}_{background}.png".replace(" ", "_")
            reference_image(W, case, i).save(Path(input_dir) / name)
            prompt[image[0]].update(class_type="LoadImage", inputs={"image": name})
    placed = [W.Placed(W.Identity.parse(s), slot) for s, slot in zip(case["subjects"], case["slots"])]
    positive = _feeding(prompt, "positive", ("CLIPTextEncode",))
    for key in positive:
        prompt[key]["inputs"]["text"] = W.scene_caption(placed, case["background"], False)
    for key in _feeding(prompt, "negative", ("ConditioningZeroOut", "CLIPTextEncode")):
        if positive:  # the toy model's unconditional prompt is the empty one it was trained with
            prompt[key] = {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative (empty prompt)"},
                           "inputs": {"text": "", "clip": prompt[positive[0]]["inputs"]["clip"]}}
    for node in prompt.values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            node["inputs"]["cfg"] = graph.SAMPLING["cfg"]
            if seed is not None:
                node["inputs"]["seed"] = seed
    return prompt


# ---- the figure of ``make demo``: a grid of fixed held-out cases, measured ------------------------
GRID_WORKFLOW = "workflows/musar_four_subjects.json"
GRID_CASE_SEED = 3  # [fixed before any grid image was made]: not an evaluation's (0, 2) nor the route study's (1)
GRID_CASES = 6  # four-subject cases, the first six of that seed: no choosing
GRID_CONDITIONS = {  # name -> (LoRA, Apply Routing inputs set; None = as the workflow ships them)
    "no routing": ("dense", {"static_routing": False, "dynamic_routing": False}),
    "static routing": ("static", {"static_routing": True, "dynamic_routing": False}),
    "as shipped": ("static", None),
}
REF_CASES = 6  # three-reference cases of the multi-reference base, the first six of GRID_CASE_SEED
# -> toyworld.refeval's conditions: stock; Route References as shipped (static routing: dynamic
# routing is off by default since the §11 measurement); with dynamic routing on
REF_CONDITIONS = {"off": "off", "Route References": "static", "+ dynamic routing": "dynamic"}


def grid_cases(W, count: int = GRID_CASES) -> list[dict]:
    from .eval import make_cases

    return make_cases(W.World(0), [(4, count)], GRID_CASE_SEED)


def workflow_prompt(path: Path) -> dict:
    """A shipped UI workflow as an API prompt with the toy loaders; saving nodes preview instead."""
    from musar_run import convert, edits

    info = convert.object_info_in_process()
    prompt = edits.substitute_standins(convert.to_api(convert.load_workflow(path), info), info,
                                       edits.STANDINS["toy"])
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node.update(class_type="PreviewImage", inputs={"images": node["inputs"]["images"]})
    return prompt


def _drop(prompt: dict, class_type: str) -> None:
    """Remove the nodes of ``class_type`` and every node that needs one of them."""
    gone = {k for k, n in prompt.items() if n["class_type"] == class_type}
    while gone:
        for key in gone:
            prompt.pop(key)
        gone = {k for k, n in prompt.items()
                if any(isinstance(v, list) and len(v) == 2 and v[0] not in prompt for v in n["inputs"].values())}


def _output_of(prompt: dict, class_type: str) -> str | None:
    return next((k for k, n in prompt.items() if n["class_type"] == class_type), None)


def run_grid(pack, runner, W, det, count: int) -> dict:
    """Every grid case under every condition through the shipped four-subject workflow."""
    base = workflow_prompt(common.ROOT / GRID_WORKFLOW)
    cases, results = grid_cases(W, count), []
    for cond, (lora, routing) in GRID_CONDITIONS.items():
        for case in cases:
            prompt = copy.deepcopy(base)
            for node in prompt.values():
                if node["class_type"] == "MUSAR_LoadDualLoRA":
                    node["inputs"]["lora_name"] = LORA_FILES[lora]
                if node["class_type"] == "MUSAR_ApplyRouting" and routing:
                    node["inputs"].update(routing)
            if routing and not routing.get("dynamic_routing", True):
                _drop(prompt, "MUSAR_RoutingPreview")  # no route to show
            prompt = for_case(prompt, runner.input, case, seed=case["seed"])
            results.append(_measure(runner, W, det, prompt, case, cond))
    return {"cases": cases, "results": results}


def run_refs(pack, runner, W, det, count: int, model_file: str) -> dict:
    """Route References off / on, three references, through the toy reference graph."""
    multiref, refeval = (module(pack, f"toyworld.{m}") for m in ("multiref", "refeval"))
    cases = multiref.eval_cases(W.World(0), [(3, count)], GRID_CASE_SEED)
    results = []
    for cond, name in REF_CONDITIONS.items():
        for case in cases:
            prompt = refeval.graph_for(runner, case, name, False, model_file)
            results.append(_measure(runner, W, det, prompt, case, cond))
    return {"cases": cases, "results": results}


def _measure(runner, W, det, prompt: dict, case: dict, cond: str) -> dict:
    from musar_run import runtime

    result = runtime.run_prompt(prompt, executor=runner.executor)
    result.raise_for_error()
    runner.executor = result.executor
    image = _to_uint8(result.output(_output_of(prompt, "VAEDecode"))[0])[0]
    preview = _output_of(prompt, "MUSAR_RoutingPreview")
    route = _to_uint8(result.output(preview)[0])[0] if preview else None
    placed = [W.Placed(W.Identity.parse(s), slot) for s, slot in zip(case["subjects"], case["slots"])]
    s = det.score(det.read_cells(image), placed)
    return {"id": case["id"], "condition": cond, "right": [bool(r) for r in s["right"]],
            "entangled": [bool(e) for e in s["entangled"]], "image": image, "route": route}


def _to_uint8(images):
    return (images.clamp(0, 1).numpy() * 255).round().astype("uint8")


def tally(results: list[dict], conditions) -> dict:
    """Per condition: subjects right, cases all right, subjects entangled."""
    out = {}
    for cond in conditions:
        rows = [r for r in results if r["condition"] == cond]
        subjects = sum(len(r["right"]) for r in rows)
        out[cond] = {"subjects_right": sum(map(sum, (r["right"] for r in rows))), "subjects": subjects,
                     "all_right": sum(all(r["right"]) for r in rows), "cases": len(rows),
                     "entangled": sum(map(sum, (r["entangled"] for r in rows)))}
    return out


def tally_line(cond: str, t: dict) -> str:
    return (f"{cond}: {t['subjects_right']}/{t['subjects']} subjects right, {t['all_right']}/{t['cases']} "
            f"images all right, {t['entangled']} entangled")


def panel(part: dict, conditions, title: str, route_of: str | None, reference):
    """One labelled grid: per case its references (``reference(case, i)``), each condition's image
    with its right count, the route of ``route_of``; the tally under it."""
    from PIL import Image

    from .figures import grid

    by = {(r["id"], r["condition"]): r for r in part["results"]}
    rows, notes = [], []
    for case in part["cases"]:
        row = [reference(case, i) for i in range(case["n"])]
        note = [None] * case["n"]
        for cond in conditions:
            r = by[(case["id"], cond)]
            row.append(Image.fromarray(r["image"]))
            note.append(f"{sum(r['right'])}/{len(r['right'])} right")
        if route_of:
            route = by[(case["id"], route_of)]["route"]
            row.append(Image.fromarray(route) if route is not None else None)
            note.append(None)
        rows.append(row)
        notes.append(note)
    n = part["cases"][0]["n"]
    header = [f"ref {i + 1}" for i in range(n)] + list(conditions) + ([f"route ({route_of})"] if route_of else [])
    t = tally(part["results"], conditions)
    return grid(rows, header, scale=UPSCALE, notes=notes, title=title,
                footer=[tally_line(c, t[c]) for c in conditions]), t


def make_demo(out: Path, count: int = GRID_CASES, refs: int = REF_CASES, threads: int | None = None) -> dict:
    """Run the grid (and the Route References panel when the multi-reference base is there),
    write ``out``/toy_demo.png and toy_demo.json, print the tallies."""
    from PIL import Image

    pack = common.setup(threads=threads)
    W, det, graph, toy = (module(pack, m) for m in ("toyworld.world", "toyworld.detector", "toyworld.graph",
                                                    "nodes.testing.toy"))
    weights = toy.weights_dir()
    loras = {name: weights / name for name in LORA_FILES.values() if (weights / name).is_file()}
    if len(loras) < len(LORA_FILES):
        raise SystemExit(f"toy demo: {weights} lacks {sorted(set(LORA_FILES.values()) - set(loras))}")
    record = {"workflow": GRID_WORKFLOW, "case_seed": GRID_CASE_SEED, "weights": str(weights)}
    figures = []
    with graph.Runner(pack, weights, out / "toy_demo_work", loras) as runner:
        grid_part = run_grid(pack, runner, W, det, count)
        figure, record["grid"] = panel(grid_part, GRID_CONDITIONS,
                                       "MUSAR subjects: four held-out subjects, the shipped four-subject workflow",
                                       "as shipped", lambda case, i: reference_image(W, case, i))
        figures.append(figure)
        multiref = module(pack, "toyworld.multiref")
        ref_model = weights / multiref.REF_MODEL_FILE
        if refs and ref_model.is_file():
            ref_part = run_refs(pack, runner, W, det, refs, ref_model.name)
            figure, record["references"] = panel(
                ref_part, REF_CONDITIONS, "Route References: three reference pictures, multi-reference base",
                "+ dynamic routing", lambda case, i: multiref.reference_picture(W.Identity.parse(case["subjects"][i])))
            figures.append(figure)
        elif refs:
            print(f"toy demo: no {ref_model.name} in {weights}: the Route References panel is left out")
    width = max(f.width for f in figures)
    sheet = Image.new("RGB", (width, sum(f.height for f in figures) + 12 * (len(figures) - 1)), (255, 255, 255))
    y = 0
    for f in figures:
        sheet.paste(f, (0, y))
        y += f.height + 12
    sheet.save(out / "toy_demo.png", optimize=True)
    common.write_json(record, out / "toy_demo.json")
    for part in ("grid", "references"):
        for cond, t in record.get(part, {}).items():
            print(tally_line(cond, t))
    return record


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0]) if args else root / "output"
    out.mkdir(parents=True, exist_ok=True)
    quick = "--quick" in sys.argv  # one case per part (the tests' smoke run)
    make_demo(out, 1 if quick else GRID_CASES, 1 if quick else REF_CASES)
    if "--docs" in sys.argv:
        (root / "docs" / "images" / "toy_demo.png").write_bytes((out / "toy_demo.png").read_bytes())
        print(root / "docs" / "images" / "toy_demo.png")
    print(out / "toy_demo.png")
