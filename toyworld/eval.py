"""Does attention routing keep subjects apart? Held-out toy subjects, generated through the real
ComfyUI graph (PromptExecutor: MUSAR nodes + stock KSampler + VAEDecode, ``toyworld.graph``),
scored by the exact detector (``toyworld.score``).

    python -m toyworld.eval                 # the full table (make eval-toy)
    python -m toyworld.eval --sets 1 --seeds 1 --counts 2 --conditions c --out /tmp/e   # one image

Cases: for n in --counts, --sets sets of n held-out subjects with pairwise different shapes and
colours (so a leaked colour is visible), each on a seeded background with the MUSAR-Gen prompt,
each subject's reference a seeded single-subject scene on another background, --seeds noise
seeds. Conditions (same cases, same seeds):
  text  the base model from the prompt alone (no subjects, no LoRA)
  a     subjects as condition tokens + dual LoRA, static routing off, dynamic routing off
  b     static routing on, dynamic off
  c     static + dynamic routing (the shipped defaults: start 0.2, double blocks, smoothing 3)
Per image records go to <out>/records.jsonl (a rerun skips finished images), the table to
<out>/table.md and <out>/summary.json, sample images and overlays to <out>/images/.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import common
from .common import module
from .figures import eval_figure
from .graph import toy_graph
from .report import render_table, table_rows

logger = logging.getLogger("toyworld.eval")
CONDITIONS = {"text": None, "a": dict(static_routing=False, dynamic_routing=False),
              "b": dict(static_routing=True, dynamic_routing=False),
              "c": dict(static_routing=True, dynamic_routing=True)}
LORA_FILE = "toy_musar_lora.safetensors"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=common.CACHE_DIR / "eval")
    p.add_argument("--weights", type=Path, default=common.WEIGHTS_DIR)
    p.add_argument("--lora", default=LORA_FILE, help="LoRA file in --weights ('' = none)")
    p.add_argument("--counts", default="2,3,4")
    p.add_argument("--sets", type=int, default=40, help="subject sets per subject count")
    p.add_argument("--seeds", type=int, default=2, help="noise seeds per set")
    p.add_argument("--conditions", default="text,a,b,c")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance (the toy model is not guidance-distilled; 4 is what docs/TOY_WORLD.md reports)")
    p.add_argument("--routing", default="{}", help="JSON overrides of MUSAR_ApplyRouting inputs")
    p.add_argument("--prompt", choices=("full", "category"), default="full",
                   help="the prompt names each subject fully ('a red striped star') or only its "
                        "category ('a star'); subject captions always name the whole subject")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4, help="cases saved as images per subject count")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _rs(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def make_cases(world, multi_caption, counts, n_sets: int, n_seeds: int, seed: int) -> list[dict]:
    """Seeded cases: subjects (distinct shapes and colours), background, references, noise seed."""
    held = list(world.heldout_subjects)
    cases = []
    for n in counts:
        for k in range(n_sets):
            rnd = random.Random(_rs(seed, n, k))
            while True:
                subjects = rnd.sample(held, n)
                if len({s.shape for s in subjects}) == n and len({s.colour for s in subjects}) == n:
                    break
            background = rnd.choice(world.backgrounds)
            refs = [(rnd.choice([b for b in world.backgrounds if b != background]), _rs(seed, n, k, i))
                    for i in range(n)]
            for s in range(n_seeds):
                cases.append({"id": f"n{n}-set{k:03d}-seed{s}", "n": n, "subjects": [x.item for x in subjects],
                              "background": background, "refs": refs, "seed": _rs(seed, n, k, "noise", s),
                              "prompt": multi_caption(subjects, background),
                              "shapes": [x.shape for x in subjects]})
    return cases


def reference_name(case: dict, i: int) -> str:
    (background, rs), item = case["refs"][i], case["subjects"][i]
    return f"ref_{item.replace(' ', '_')}_{background.replace(' ', '_')}_{rs}.png"


def reference_files(world, case: dict, input_dir: Path) -> list[tuple[str, str]]:
    """Render each subject's reference scene into ComfyUI's input folder: (caption, file name)."""
    out = []
    for i, item in enumerate(case["subjects"]):
        name = reference_name(case, i)
        if not (input_dir / name).is_file():
            background, rs = case["refs"][i]
            world.render_scene([item], background, None, rs)[0].save(input_dir / name)
        out.append((item, name))
    return out


def prompt_text(case: dict, mode: str) -> str:
    text = case["prompt"]
    if mode == "category":
        for item, shape in zip(case["subjects"], case["shapes"]):
            text = text.replace(f"a {item}", f"a {shape}", 1)
    return text


def run_case(executor, world, case, cond, args, input_dir):
    from musar_run import runtime

    settings = CONDITIONS[cond]
    if settings is not None:
        settings = {**settings, **json.loads(args.routing)} if cond != "a" else dict(settings)
    lora = LORA_FILE if args.lora else None
    graph = toy_graph(prompt_text(case, args.prompt), reference_files(world, case, input_dir), settings, seed=case["seed"],
                      lora=lora, steps=args.steps, cfg=args.cfg)
    result = runtime.run_prompt(graph, executor=executor)
    result.raise_for_error()
    image = result.output("12")[0]
    overlay = result.output("14")[0] if "14" in graph else None
    return result.executor, image, overlay


def to_png(t) -> Image.Image:
    return Image.fromarray((t[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))


@contextlib.contextmanager
def comfy_folders(args, folder_paths):
    """ComfyUI's input folder, a loras folder with the toy LoRA and the toy weights folder for
    MUSAR_ToyWorldLoader, restored afterwards (the script may run inside a test process)."""
    input_dir = args.out / "comfy" / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    old_input, old_env = folder_paths.get_input_directory(), os.environ.get("MUSAR_TOY_WEIGHTS")
    lora_dir = args.out / "comfy" / "loras"
    loras = folder_paths.folder_names_and_paths["loras"][0]
    if args.lora:
        lora_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.weights / args.lora, lora_dir / LORA_FILE)
        folder_paths.add_model_folder_path("loras", str(lora_dir), is_default=True)
    os.environ["MUSAR_TOY_WEIGHTS"] = str(args.weights.resolve())
    folder_paths.set_input_directory(str(input_dir))
    try:
        yield input_dir
    finally:
        folder_paths.set_input_directory(old_input)
        if str(lora_dir) in loras:
            loras.remove(str(lora_dir))
        if old_env is None:
            os.environ.pop("MUSAR_TOY_WEIGHTS", None)
        else:
            os.environ["MUSAR_TOY_WEIGHTS"] = old_env


def load_records(path: Path) -> dict:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["id"], r["condition"])] = r
    return done


def evaluate(args) -> dict:
    pack = common.setup(threads=args.threads, base_dir=args.out / "comfy")
    import folder_paths

    mt = module(pack, "toyworld")
    world = mt.World(seed=0, panel=128)
    cases = make_cases(world, mt.multi_caption, [int(c) for c in args.counts.split(",")], args.sets,
                       args.seeds, args.seed)
    conditions = args.conditions.split(",")
    done, t0 = load_records(args.out / "records.jsonl"), time.perf_counter()
    with comfy_folders(args, folder_paths) as input_dir, (args.out / "records.jsonl").open("a") as log:
        todo = [(cond, c) for cond in conditions for c in cases if (c["id"], cond) not in done]
        executor, detector = None, mt.Detector()
        for k, (cond, case) in enumerate(todo, 1):
            t = time.perf_counter()
            executor, image, overlay = run_case(executor, world, case, cond, args, input_dir)
            found = detector(image[0].numpy())
            res = mt.score(found, case["subjects"])
            rec = {"id": case["id"], "condition": cond, "n": case["n"], "subjects": case["subjects"],
                   "seconds": round(time.perf_counter() - t, 3),
                   "detected": [f"{d.colour} {d.pattern} {d.shape}" for d in found],
                   **{key: res[key] for key in ("all_present", "exact", "entangled", "collapsed", "mixed",
                                                "extra", "present")}}
            save_images(args, case, cond, image, overlay)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            done[(case["id"], cond)] = rec
            if k % 20 == 0:
                logger.info("%d/%d images (%s %s) %.0f s", k, len(todo), cond, case["id"], time.perf_counter() - t0)
    records = [done[(c["id"], cond)] for cond in conditions for c in cases]
    for n in sorted({c["n"] for c in cases}):
        eval_figure(args.out, cases, conditions, n, args.samples,
                    lambda case, i: Image.open(input_dir / reference_name(case, i)))
    return summarise(args, records, time.perf_counter() - t0)


def save_images(args, case, cond, image, overlay) -> None:
    k = int(case["id"].split("set")[1][:3])
    if k >= args.samples or not case["id"].endswith("seed0"):
        return
    folder = args.out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    to_png(image).save(folder / f"{case['id']}_{cond}.png")
    if overlay is not None:
        to_png(overlay).save(folder / f"{case['id']}_{cond}_route.png")


def summarise(args, records: list[dict], seconds: float) -> dict:
    rows = table_rows(records, args.conditions.split(","))
    table = render_table(rows)
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "seconds": round(seconds, 1)}
    (args.out / "table.md").write_text(table)
    common.write_json(summary, args.out / "summary.json")
    print(table)
    return summary


def main(argv=None) -> int:
    args = parse(argv)
    common.log_setup(args.verbose)
    args.out.mkdir(parents=True, exist_ok=True)
    evaluate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
