"""``python -m musar_run WORKFLOW``: run a ComfyUI workflow headless through real ComfyUI.

The workflow (UI or API format) is converted with the node definitions of the loaded runtime,
edited (stand-in models, model files, ``--set`` overrides), validated by ComfyUI's
``validate_prompt`` and executed by ComfyUI's ``PromptExecutor`` (``musar_run.runtime``). Images
land in ``--output``. Exit codes: 0 done, 2 bad command line / workflow, 3 the prompt does not
validate (missing model file, image, node type, bad value), 4 a node failed while running.

Run it from the repository root (or anywhere with the repository on PYTHONPATH); the runtime
keeps ComfyUI's ``nodes.py`` ahead of this repository's ``nodes/`` package on ``sys.path``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import convert, runtime
from .edits import (
    MODEL_FLAGS,
    MODEL_INPUTS,
    STANDINS,
    UsageError,
    apply_overrides,
    links_of,
    model_dirs,
    set_model_files,
    substitute_standins,
)

logger = logging.getLogger(__name__)
ASSETS = runtime.REPO_ROOT / "workflows" / "assets"
FLAG_HELP = {"unet": "FLUX.1 diffusion model (fp16 or fp8)", "clip_l": "CLIP-L text encoder",
             "t5": "T5-XXL text encoder (fp16 or fp8)", "vae": "FLUX VAE (ae.safetensors)",
             "lora": "MUSAR dual LoRA or OminiControl subject LoRA"}
FLAG_OF_FOLDER = {"diffusion_models": "--unet", "text_encoders": "--clip-l / --t5", "vae": "--vae",
                  "loras": "--lora"}
EXIT_USAGE, EXIT_INVALID, EXIT_FAILED = 2, 3, 4


# ---------------------------------------------------------------------------------------------
# messages


def _node_label(prompt: dict, key) -> str:
    node = prompt.get(str(key), {})
    title = node.get("_meta", {}).get("title") or node.get("class_type", "?")
    return f"node {key} '{title}' ({node.get('class_type', '?')})"


def _missing_file(prompt, key, folder, value, folder_paths) -> str:
    searched = ", ".join(folder_paths.get_folder_paths(folder))
    hint = FLAG_OF_FOLDER.get(folder)
    return (f"{_node_label(prompt, key)}: model file '{value}' is not in the '{folder}' folder "
            f"(searched: {searched}). Put it there, or pass {hint + ' FILE / ' if hint else ''}"
            "--models DIR, or --tiny for the stand-ins.")


def missing_model_files(prompt: dict, object_info: dict, folder_paths) -> list[str]:
    """Model files selected in V3 combos that are not in their folder (ComfyUI does not check)."""
    lines = []
    for key, node in sorted(prompt.items(), key=lambda kv: (len(kv[0]), kv[0])):
        for name, value in node["inputs"].items():
            folder = MODEL_INPUTS.get((node["class_type"], name))
            info = object_info.get(node["class_type"], {}).get("input", {})
            spec = {**info.get("required", {}), **info.get("optional", {})}.get(name)
            if folder and spec and spec[0] == "COMBO" and isinstance(value, str) \
                    and value not in folder_paths.get_filename_list(folder):
                lines.append(_missing_file(prompt, key, folder, value, folder_paths))
    return lines


def describe_errors(prompt: dict, error: dict | None, node_errors: dict, folder_paths) -> list[str]:
    """Readable lines for validate_prompt's answer: missing model files name the file and folder."""
    lines = []
    for key, entry in sorted(node_errors.items(), key=lambda kv: (len(kv[0]), kv[0])):
        for err in entry.get("errors", []):
            extra = err.get("extra_info") or {}
            name, value = extra.get("input_name"), extra.get("received_value")
            folder = MODEL_INPUTS.get((prompt.get(key, {}).get("class_type"), name))
            if err.get("type") == "value_not_in_list" and folder:
                lines.append(_missing_file(prompt, key, folder, value, folder_paths))
            elif "image" in (name or "") or "Invalid image file" in err.get("details", ""):
                lines.append(f"{_node_label(prompt, key)}: {err.get('details') or err['message']} "
                             f"(images are read from {folder_paths.get_input_directory()}: pass "
                             f"--input DIR; the demo drawings are in {ASSETS})")
            else:
                detail = err.get("details") or ""
                lines.append(f"{_node_label(prompt, key)}: {err.get('message')}"
                             + (f": {detail}" if detail else ""))
    if not lines and error:
        lines.append(f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": "))
    return lines


class Progress:
    """Node-level progress from the executor's events (the sampler draws its own tqdm bar)."""

    def __init__(self, prompt: dict, outputs: list, stream=sys.stderr):
        self.prompt, self.stream = prompt, stream
        self.total = len(self._needed(outputs))
        self.done, self.current, self.started = 0, None, 0.0
        self.times: dict[str, float] = {}

    def _needed(self, outputs) -> set:
        seen, stack = set(), [str(o) for o in outputs]
        while stack:
            key = stack.pop()
            if key in seen or key not in self.prompt:
                continue
            seen.add(key)
            stack += [link[0] for _, link in links_of(self.prompt[key])]
        return seen

    def _finish(self):
        if self.current is not None:
            self.times[self.current] = time.perf_counter() - self.started
            self.current = None

    def __call__(self, event: str, data: dict):
        if event == "execution_cached":
            self.done += len(data.get("nodes") or [])
        elif event == "executing":
            self._finish()
            node = data.get("node")
            if node is None:
                return
            self.done += 1
            self.current, self.started = str(node), time.perf_counter()
            width = 20
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (width - filled)
            entry = self.prompt.get(str(node), {})
            title = entry.get("_meta", {}).get("title") or entry.get("class_type", "?")
            print(f"[{bar}] {self.done:>2}/{self.total}  {title} (#{node})", file=self.stream, flush=True)
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            self._finish()


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m musar_run",
        description="Run a ComfyUI workflow (UI or API JSON) headless through real ComfyUI.")
    p.add_argument("workflow", type=Path, help="workflow JSON (UI format as saved by ComfyUI, or API format)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input, e.g. --set 11.seed=7 --set '6.text=a cat' "
                        "(NODE: id, title or node type)")
    p.add_argument("--output", type=Path, default=Path("output"), help="output folder (default: ./output)")
    p.add_argument("--input", type=Path,
                   help="input folder for Load Image (default: a temporary folder holding the "
                        "pack's demo images from workflows/assets)")
    mode = p.add_mutually_exclusive_group()
    for name, standin in STANDINS.items():  # one flag per stand-in set: --tiny, ...
        mode.add_argument(f"--{name}", dest="standin", action="store_const", const=name,
                          help=f"replace the model loaders by {standin.node}: {standin.description}")
    mode.add_argument("--models", type=Path, help="a ComfyUI-style models folder (diffusion_models/, "
                                                  "text_encoders/, vae/, loras/ ...) to search first")
    for flag, (folder, targets) in MODEL_FLAGS.items():
        where = ", ".join(f"{c}.{n}" for c, n in targets[:2])
        p.add_argument(f"--{flag.replace('_', '-')}", dest=f"file_{flag}", type=Path, metavar="FILE",
                       help=f"{FLAG_HELP[flag]}: symlinked into a {folder} folder and selected in "
                            f"{where}")
    p.add_argument("--cpu", action="store_true",
                   help="run on the CPU even when a GPU is available (stand-in runs always use the CPU)")
    p.add_argument("--save-api", type=Path, metavar="FILE", help="also write the final API prompt here")
    p.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's log")
    args = p.parse_args(argv)
    args.files = {f: getattr(args, f"file_{f}") for f in MODEL_FLAGS if getattr(args, f"file_{f}")}
    if args.standin and args.files:
        p.error(f"--{args.standin} replaces the model loaders; it cannot be combined with model files")
    return args


def _prepare_input(args, scratch: Path) -> Path:
    if args.input is not None:
        if not args.input.is_dir():
            raise UsageError(f"--input {args.input}: not a directory")
        return args.input.resolve()
    folder = scratch / "input"
    folder.mkdir(parents=True, exist_ok=True)
    for png in sorted(ASSETS.glob("*.png")):
        shutil.copy2(png, folder / png.name)
    return folder


def _saved_files(result, folder_paths) -> list[tuple[str, Path]]:
    out = []
    for key, ui in (result.ui or {}).items():
        for item in ui.get("images", []) if isinstance(ui, dict) else []:
            if item.get("type") == "output":
                base = Path(folder_paths.get_output_directory())
                out.append((key, base / item.get("subfolder", "") / item["filename"]))
    return out


def _use_cpu(args) -> bool:
    """ComfyUI must be told --cpu on a machine without an accelerator; use one when there is."""
    if args.cpu or args.standin:
        return True
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (mps is not None and mps.is_available()))


def _start_comfyui(args):
    """Bootstrap ComfyUI and load the pack with ComfyUI's import noise hidden (unless -v)."""
    root = logging.getLogger()
    if args.verbose and not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(logging.INFO if args.verbose else logging.ERROR)
    runtime.bootstrap(cpu=_use_cpu(args))
    runtime.load_pack()
    if not args.verbose:
        root.setLevel(logging.WARNING)
    return convert.object_info_in_process()


def _edit(args, prompt: dict, object_info: dict, folder_paths, scratch: Path) -> dict:
    """Stand-ins, model files, overrides; ComfyUI's input / output / temp folders."""
    if args.standin:
        standin = STANDINS[args.standin]
        prompt = substitute_standins(prompt, object_info, standin)
        if standin.threads and "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(standin.threads)
        print(f"--{args.standin}: model loaders replaced by {standin.node}: {standin.description}",
              file=sys.stderr)
    for folder, directory in set_model_files(prompt, args.files, scratch / "models").items():
        folder_paths.add_model_folder_path(folder, str(directory), is_default=True)
    if args.models:
        for folder, directory in model_dirs(args.models.expanduser().resolve(), folder_paths):
            folder_paths.add_model_folder_path(folder, directory, is_default=True)
    input_dir = _prepare_input(args, scratch)
    if args.standin and STANDINS[args.standin].prepare:
        if str(runtime.REPO_ROOT) not in sys.path:  # appended: ComfyUI's nodes.py keeps winning
            sys.path.append(str(runtime.REPO_ROOT))
        module, _, function = STANDINS[args.standin].prepare.partition(":")
        prompt = getattr(importlib.import_module(module), function)(prompt, input_dir)
    prompt = apply_overrides(prompt, object_info, args.overrides)
    folder_paths.set_input_directory(str(input_dir))
    args.output.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(args.output.resolve()))
    folder_paths.set_temp_directory(str(scratch / "temp"))
    if args.save_api:
        args.save_api.write_text(json.dumps(prompt, indent=2) + "\n", encoding="utf-8")
    return prompt


def run(args) -> int:
    t0 = time.perf_counter()
    try:
        data = json.loads(args.workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read workflow {args.workflow}: {e}") from None
    object_info = _start_comfyui(args)
    import folder_paths

    try:
        prompt = convert.to_api(data, object_info)
    except convert.ConversionError as e:
        raise UsageError(f"{args.workflow}: {e}") from None
    scratch = Path(tempfile.mkdtemp(prefix="musar-run-"))
    try:
        prompt = _edit(args, prompt, object_info, folder_paths, scratch)
        return _validate_and_execute(prompt, object_info, folder_paths, args.verbose, t0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _QuietMusarErrors(logging.Filter):
    """Drops ComfyUI's error log of a node failing with a MUSAR error (its message and traceback,
    logged inside ComfyUI's ``except`` block): the message is written for the user and printed
    once below; the traceback of a MUSAR error is noise. Any other exception keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and runtime.is_musar_error(sys.exc_info()[1]))


def _validate_and_execute(prompt, object_info, folder_paths, verbose, t0) -> int:
    root = logging.getLogger()
    level = root.level
    if not verbose:  # ComfyUI logs every validation error; the summary below says it once
        root.setLevel(logging.CRITICAL)
    try:
        valid, error, outputs, node_errors = runtime.validate(prompt)
    finally:
        root.setLevel(level)
    problems = missing_model_files(prompt, object_info, folder_paths)
    if not valid or problems:
        print("The workflow does not validate:", file=sys.stderr)
        for line in problems + describe_errors(prompt, error, node_errors, folder_paths):
            print(f"  - {line}", file=sys.stderr)
        return EXIT_INVALID
    progress = Progress(prompt, outputs)
    t_run = time.perf_counter()
    quiet = None if verbose else _QuietMusarErrors()
    if quiet:
        root.addFilter(quiet)
    try:
        result = runtime.run_prompt(prompt, on_event=progress)
    finally:
        if quiet:
            root.removeFilter(quiet)
    t_end = time.perf_counter()
    if not result.ok:
        err = result.error or {}
        print(f"{_node_label(prompt, err.get('node_id', '?'))} failed: "
              f"{err.get('exception_type', 'error')}: {err.get('exception_message', result.node_errors)}",
              file=sys.stderr)
        return EXIT_FAILED
    for key, path in _saved_files(result, folder_paths):
        print(f"saved {path}  ({_node_label(prompt, key)})")
    slow = sorted(progress.times.items(), key=lambda kv: -kv[1])[:3]
    slowest = ", ".join(f"{prompt[k]['class_type']} #{k} {s:.2f} s" for k, s in slow)
    print(f"time: {t_end - t0:.1f} s = ComfyUI start-up and checks {t_run - t0:.1f} s + graph "
          f"{t_end - t_run:.1f} s (slowest nodes: {slowest})")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
