"""The plain folder layout for users' own data (documented in docs/DATASETS.md).

Every visible sub-folder of the root is one sample; its kind is detected from its files:

multi-subject sample                      single-subject pair
  <root>/<name>/target.png                  <root>/<name>/panel_0.png
  <root>/<name>/cond_0.png, cond_1.png ...  <root>/<name>/panel_1.png
  <root>/<name>/sample.json                 <root>/<name>/meta.json
    {"prompt": str,                           {"item": str, "description_0": str,
     "cond_captions": [str, ...]}              "description_1": str, "category": str}

Images may be .png, .jpg, .jpeg, .webp or .bmp. JSON metadata and file presence are checked
when the folder opens; images are decoded on access.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import DatasetError
from ..paths import is_inside
from .datasets import MultiSubjectDataset, PairDataset
from .images import BadRow, decode_image
from .records import MultiSubjectSample, ReadOptions, ReadReport, SubjectPair

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FILTER_REASONS = ("bad_metadata", "unrecognised_folder", "ambiguous_folder", "other_kind")


def open_folder(root: Path, options: ReadOptions) -> PairDataset | MultiSubjectDataset:
    """Read the sample sub-folders of ``root``; see the module doc for the layout."""
    if not root.is_dir():
        raise DatasetError(f"expected a folder of sample sub-folders at '{root}', got a file")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    entries: dict[str, list] = {"multi": [], "pairs": []}
    problems: list[tuple[str, str]] = []
    for folder in folders:
        try:
            kind, entry = _read_sample_folder(folder, root)
            entries[kind].append(entry)
        except BadRow as bad:
            problems.append((bad.reason, folder.name))
            logger.debug("folder sample %s rejected: %s", folder.name, bad)
    kind = _choose_kind(root, entries, options.folder_kind)
    other = "pairs" if kind == "multi" else "multi"
    problems += [("other_kind", entry["name"]) for entry in entries[other]]
    report = ReadReport(str(root), f"folder/{kind}", rows_read=len(folders))
    for reason, key in problems:
        if reason in FILTER_REASONS:
            report.add_filtered(reason, 1, [key])
        else:
            report.add_skipped(reason, key)
    if not folders and _looks_like_a_sample(root):
        raise DatasetError(f"'{root}' looks like one sample folder, not a dataset root: "
                           f"pass its parent folder (every sub-folder is one sample)")
    rows = _FolderRows(entries[kind], options.min_side, kind)
    if kind == "pairs":
        return PairDataset([e["item"] for e in entries[kind]], rows, report)
    return MultiSubjectDataset(rows, report)


class _FolderRows:
    """Sample sub-folders of one kind; images decoded on ``load``."""

    def __init__(self, entries: list[dict], min_side: int, kind: str):
        self.entries, self.min_side, self.kind = entries, min_side, kind

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        return self.entries[index]["name"]

    def load(self, index: int) -> SubjectPair | MultiSubjectSample:
        entry = self.entries[index]
        return _load_pair(entry, self.min_side) if self.kind == "pairs" \
            else _load_multi(entry, self.min_side)


def _choose_kind(root: Path, entries: dict, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if entries["multi"] and entries["pairs"]:
        raise DatasetError(f"folder '{root}' mixes {len(entries['multi'])} multi-subject samples "
                           f"and {len(entries['pairs'])} single-subject pairs: expected one kind; "
                           f"pass folder_kind='multi' or folder_kind='pairs' (or split the folder)")
    return "pairs" if entries["pairs"] else "multi"


def _looks_like_a_sample(folder: Path) -> bool:
    names = {p.stem.lower() for p in folder.iterdir() if p.is_file()}
    return bool(names & {"target", "panel_0", "sample", "meta"})


def _inside(path: Path, root: Path) -> Path:
    """``path`` when it (symlinks resolved) lies inside the dataset ``root``; else the sample
    is skipped - nothing outside the dataset's folder is read."""
    if not is_inside(path, root):
        raise BadRow("outside_dataset", f"{path.name} leads outside the dataset folder")
    return path


def _images_by_stem(folder: Path, root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(_inside(folder, root).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and _inside(path, root):
            stem = path.stem.lower()
            if stem in found:
                raise BadRow("ambiguous_folder", f"two images named {stem}.*")
            found[stem] = path
    return found


def _read_json(path: Path, root: Path) -> dict:
    if path.exists():
        _inside(path, root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadRow("bad_metadata", f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRow("bad_metadata", f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRow("bad_metadata", f"{path.name} should hold a JSON object")
    return data


def _read_sample_folder(folder: Path, root: Path) -> tuple[str, dict]:
    images = _images_by_stem(folder, root)
    multi = "target" in images or (folder / "sample.json").exists()
    pair = "panel_0" in images or "panel_1" in images or (folder / "meta.json").exists()
    if multi and pair:
        raise BadRow("ambiguous_folder", "holds files of both a sample and a pair")
    if multi:
        return "multi", _multi_entry(folder, images, root)
    if pair:
        return "pairs", _pair_entry(folder, images, root)
    raise BadRow("unrecognised_folder", "no target.*, sample.json, panel_*.* or meta.json")


def _string(data: dict, key: str, required: bool) -> str:
    value = data.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRow("bad_metadata", f"{key!r} should be a {'non-empty ' if required else ''}"
                                     f"string, got {value!r}")
    return value.strip() if required else value


def _multi_entry(folder: Path, images: dict[str, Path], root: Path) -> dict:
    meta = _read_json(folder / "sample.json", root)
    prompt = _string(meta, "prompt", required=False)
    captions = meta.get("cond_captions")
    if not isinstance(captions, list) or not captions or \
            not all(isinstance(c, str) for c in captions):
        raise BadRow("bad_metadata", f"cond_captions should be a non-empty list of strings, "
                                     f"got {captions!r}")
    if any(not c.strip() for c in captions):
        raise BadRow("empty_caption", f"cond_captions {captions!r} has an empty caption")
    cond_files = sorted(s for s in images if s.startswith("cond_"))
    expected = [f"cond_{i}" for i in range(len(captions))]
    if any(s not in expected for s in cond_files):
        raise BadRow("bad_metadata", f"{len(captions)} cond_captions but images {cond_files}")
    absent = [s for s in ["target", *expected] if s not in images]
    if absent:
        raise BadRow("missing_image", f"missing {absent}")
    return {"name": folder.name, "target": images["target"], "prompt": prompt,
            "conds": [images[s] for s in expected], "captions": tuple(captions)}


def _pair_entry(folder: Path, images: dict[str, Path], root: Path) -> dict:
    meta = _read_json(folder / "meta.json", root)
    entry = {"name": folder.name, "item": _string(meta, "item", required=True)}
    for key in ("description_0", "description_1", "category"):
        entry[key] = _string(meta, key, required=False)
    absent = [s for s in ("panel_0", "panel_1") if s not in images]
    if absent:
        raise BadRow("missing_image", f"missing {absent}")
    entry["panels"] = (images["panel_0"], images["panel_1"])
    return entry


def _load_pair(entry: dict, min_side: int) -> SubjectPair:
    panels = tuple(decode_image(p, min_side=min_side) for p in entry["panels"])
    return SubjectPair(item=entry["item"], category=entry["category"], panels=panels,
                       descriptions=(entry["description_0"], entry["description_1"]),
                       key=entry["name"])


def _load_multi(entry: dict, min_side: int) -> MultiSubjectSample:
    conds = tuple(decode_image(p, min_side=min_side) for p in entry["conds"])
    return MultiSubjectSample(cond_images=conds, cond_captions=entry["captions"],
                              target=decode_image(entry["target"], min_side=min_side),
                              prompt=entry["prompt"], key=entry["name"])
