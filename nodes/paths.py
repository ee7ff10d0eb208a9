"""Which folders the MUSAR nodes may read and write (SECURITY.md has the whole table).

A prompt POSTed to a ComfyUI server is untrusted: every path-like input is resolved here,
server-side, at validate time and again at execute time, after resolving symlinks and ``..``
(musar/paths.py), and accepted only inside a folder ComfyUI knows:

* datasets (MUSAR_LoadDiptychDataset.path): the ``musar_datasets`` folders (``models/
  musar_datasets`` plus any ``musar_datasets:`` entry of extra_model_paths.yaml, the opt-in
  for data elsewhere - set by whoever runs the server, never by a prompt) and ``input/``;
* training runs (MUSAR_TrainDualLoRA): ``output/musar_training/<output_name>/``; resume reads
  checkpoints of that run folder only;
* LoRA files: ComfyUI's ``loras`` folders (its own lookup; nodes/lora.py), saves under the first.

Refusals never say whether the path exists. ``confine(path, roots, what, error, where)`` is the
helper for any path input confined to a list of folders (pure part: musar/paths.py); a new
loader calls it with its own roots. A combo that picks one file of a fixed folder (MUSAR
Example Image, the toy-world loader) lists its options with ``musar.paths.folder_files`` and
accepts a value only through ``musar.paths.folder_file`` (a listed plain name, symlinks resolved).
"""

from __future__ import annotations

import os

import folder_paths

from ..musar.errors import DatasetError, MusarError, TrainingError
from ..musar.paths import resolve_inside

DATASETS = "musar_datasets"
TRAINING = "musar_training"


def register_folders() -> None:
    """Add ``models/musar_datasets`` as a folder_paths folder (after any the user's
    extra_model_paths.yaml already gave it, which stay first)."""
    folder_paths.add_model_folder_path(DATASETS, os.path.join(folder_paths.models_dir, DATASETS))


def confine(path, roots, what: str, error: type[MusarError], where: str) -> str:
    """The real path of ``path`` inside one of ``roots``, or ``error`` naming only the allowed
    places (``where``, e.g. "models/musar_datasets or input/") - never what exists elsewhere."""
    found = resolve_inside(path, roots)
    if found is None:
        shown = path if isinstance(path, str) and len(path) <= 200 else f"{str(path)[:200]}..."
        raise error(f"{what} {shown!r} is not inside the folders this server lets MUSAR use "
                    f"({where}); expected a path inside them. To use data elsewhere, whoever runs "
                    "the server registers its folder (SECURITY.md)")
    return found


def dataset_roots() -> list[str]:
    return [*folder_paths.get_folder_paths(DATASETS), folder_paths.get_input_directory()]


def dataset_path(path, must_exist: bool = True) -> str:
    """A dataset path (file or folder) inside the dataset folders; ``must_exist`` False at
    validation, so a workflow whose data is not there yet still validates (the node's run
    reports it missing)."""
    where = "models/musar_datasets, the musar_datasets folders of extra_model_paths.yaml, input/"
    if not isinstance(path, str) or not path.strip():
        raise DatasetError("the dataset path is empty: expected a .parquet file, a folder of "
                           f"parquet shards or a sample folder inside {where}")
    found = confine(path.strip(), dataset_roots(), "dataset path", DatasetError, where)
    if must_exist and not os.path.exists(found):
        raise DatasetError(f"dataset path {path.strip()!r} does not exist in {where}: put the data "
                           "there (a .parquet file, a folder of shards or a sample folder)")
    return found


def training_root() -> str:
    return os.path.join(folder_paths.get_output_directory(), TRAINING)


def run_folder(output_name: str) -> str:
    """``output/musar_training/<output_name>`` (resolved); TrainingError if it leaves output/."""
    name = output_name.strip() if isinstance(output_name, str) else ""
    if not name or any(c in name for c in "/\\\x00") or name.strip(". ") == "":
        raise TrainingError(f"output_name {output_name!r} must be a plain name (no folders), e.g. "
                            "musar_dual_lora")
    return confine(os.path.join(training_root(), name), [folder_paths.get_output_directory()],
                   "run folder", TrainingError, f"output/{TRAINING}/")


def lora_save_target(filename_prefix) -> tuple[str, str, int]:
    """(folder, file name stem, first counter) for a LoRA saved under ``filename_prefix`` inside
    the first ``loras`` folder: resolved first (no absolute path, ``..`` or symlink out of it),
    then ComfyUI's own save-path rule picks the counter."""
    loras = lora_root()
    text = filename_prefix if isinstance(filename_prefix, str) else ""
    ok = text.strip() and "\x00" not in text and os.path.basename(os.path.normpath(text)).strip(". ")
    if not ok or resolve_inside(os.path.join(loras, os.path.normpath(text)), [loras]) is None:
        raise TrainingError(f"filename_prefix {filename_prefix!r} must name a file inside "
                            "models/loras (e.g. musar/dual_lora); expected no absolute path and no "
                            "'..' leaving the folder")
    folder, name, counter, _, _ = folder_paths.get_save_image_path(text, loras)
    return folder, name, counter


def lora_root() -> str:
    """The folder MUSAR_SaveDualLoRA writes to: the first of ComfyUI's ``loras`` folders."""
    return folder_paths.get_folder_paths("loras")[0]
