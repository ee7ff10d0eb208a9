"""Build the shipped training workflow: ``python -m musar_train.workflow [--check]``.

Writes ``workflows/musar_train_dual_lora.json`` (UI format, laid out from the runtime's node
definitions with scripts/make_demo_assets.py's Builder), its Templates-browser thumbnail
``.jpg`` and the API copy ``workflows/api/musar_train_dual_lora.json`` (musar_run.convert).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
NAME = "musar_train_dual_lora"
WORKFLOWS = ROOT / "workflows"

NOTE = """MUSAR TRAINING: debiased diptych learning of the dual-branch LoRA

MODEL FILES (ComfyUI/models/...)
- diffusion_models/flux1-dev.safetensors (FLUX.1-dev). weight_dtype fp8_e4m3fn halves the frozen
  base weights' memory; the LoRA and its optimizer state stay fp32.
- text_encoders/clip_l.safetensors and text_encoders/t5xxl_fp16.safetensors
- vae/ae.safetensors
The trained LoRA is saved to loras/musar/dual_lora_NNNNN_.safetensors (MUSAR Save Dual LoRA);
load it with MUSAR Load Dual LoRA in musar_two_subjects.json.

DATA (MUSAR Load Diptych Dataset: path)
Subjects200K exported to parquet (single-subject pairs -> two-subject diptychs), MUSAR-Gen
parquet (ready two-subject samples) or your own folder (docs/DATASETS.md). Nothing is downloaded.
The path is relative to models/musar_datasets (or input/); data elsewhere needs a
musar_datasets entry in extra_model_paths.yaml (SECURITY.md).

RUN
Checkpoints: output/musar_training/<output_name>/ every checkpoint_every steps (last 3 kept);
Cancel writes the last completed step; resume=latest continues bit-identically. The node draws a
live loss chart; the loss should drop in the first few hundred steps and then decline slowly
(docs/TRAINING.md). Big runs / several GPUs: python -m musar_train --config train.yaml
(torchrun --nproc_per_node K for data parallel).
"""


def _builder_module():
    spec = importlib.util.spec_from_file_location("make_demo_assets", ROOT / "scripts" / "make_demo_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(info) -> dict:
    assets = _builder_module()
    b = assets.Builder(info)
    b.note(1, (-470, 0), (440, 640), NOTE)
    b.add(2, "UNETLoader", (0, 0), {"unet_name": "flux1-dev.safetensors", "weight_dtype": "fp8_e4m3fn"})
    b.add(3, "DualCLIPLoader", (0, 130), {"clip_name1": "clip_l.safetensors",
                                          "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"})
    b.add(4, "VAELoader", (0, 300), {"vae_name": "ae.safetensors"})
    b.add(5, "MUSAR_LoadDiptychDataset", (0, 420), {"path": "Subjects200K/data", "prompt_dropout": 0.1, "condition_dropout": 0.1},
          size=(340, 420))
    b.add(6, "MUSAR_TrainDualLoRA", (400, 0),
          {"steps": 3000, "learning_rate": 1e-4, "checkpoint_every": 250, "validation_every": 250,
           "output_name": "musar_dual_lora", "resume": "latest", "precision": "bf16",
           "gradient_checkpointing": True, "grad_accumulation": 4},
          {"model": (2, 0), "clip": (3, 0), "vae": (4, 0), "dataset": (5, 0)}, size=(360, 620))
    b.add(7, "MUSAR_SaveDualLoRA", (800, 0), {"filename_prefix": "musar/dual_lora"}, {"lora": (6, 0)})
    b.add(8, "PreviewImage", (800, 140), {}, {"images": (6, 1)}, title="Loss curve", size=(420, 300))
    b.add(9, "PreviewImage", (800, 470), {}, {"images": (6, 2)}, title="Validation image",
          size=(420, 300))
    b.group("Models (frozen)", [2, 3, 4], "#3f789e")
    b.group("Training", [5, 6], "#8A8")
    b.group("Results", [7, 8, 9], "#b58b2a")
    return b.workflow()


def thumbnail() -> bytes:
    """Two reference drawings and the diptych target they become."""
    assets = _builder_module()
    sheet = Image.new("RGB", (512, 512), (250, 250, 250))
    refs = [assets.IMAGES[n][0]() for n in ("musar_red_mug.png", "musar_yellow_duck.png")]
    for i, ref in enumerate(refs):
        sheet.paste(ref.resize((160, 160), Image.LANCZOS), (40 + 272 * i, 40))
    target = Image.new("RGB", (432, 216))
    for i, ref in enumerate(reversed(refs)):
        target.paste(ref.resize((216, 216), Image.LANCZOS), (216 * i, 0))
    sheet.paste(target, (40, 256))
    draw = ImageDraw.Draw(sheet)
    draw.text((40, 215), "conditions  ->  diptych target (debiased diptych learning)",
              fill=(40, 40, 40), font=ImageFont.load_default())
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def generated_files() -> dict[Path, bytes]:
    sys.path.append(str(ROOT))
    from musar_run import convert, runtime

    runtime.bootstrap(base_dir=Path(tempfile.mkdtemp(prefix="musar-workflow-")))
    runtime.load_pack(ROOT)
    info = convert.object_info_in_process()
    workflow = build(info)
    dump = lambda data: (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()  # noqa: E731
    return {WORKFLOWS / f"{NAME}.json": dump(workflow), WORKFLOWS / f"{NAME}.jpg": thumbnail(),
            WORKFLOWS / "api" / f"{NAME}.json": dump(convert.ui_to_api(workflow, info))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    files = generated_files()
    stale = [p for p, data in files.items() if not (p.is_file() and p.read_bytes() == data)]
    if not args.check:
        for path in stale:
            path.write_bytes(files[path])
    for path in stale:
        print(("differs: " if args.check else "wrote: ") + str(path.relative_to(ROOT)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
