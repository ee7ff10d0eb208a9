"""The CLI's YAML config: sections, keys and their checks (docs/TRAINING.md lists them).

    model:    tiny stand-ins ({kind: tiny, size, seed}) or FLUX files
              ({kind: flux, unet, weight_dtype, clip_l, t5, vae}); the string "tiny" is short
              for the default tiny stand-ins
    dataset:  the inputs of MUSAR Load Diptych Dataset (musar.train.settings.DatasetSettings):
              path, layout, min_quality, target_width, target_height, reference_size,
              prompt_template, prompt_dropout, condition_dropout, seed
    train:    TrainConfig fields (musar/train/config.py), checked by TrainConfig itself
    output:   {dir, name}: checkpoints in <dir>/checkpoints, the LoRA as <dir>/<name>.safetensors
    resume:   none | latest | <checkpoint file>
    cache_dir, device (auto | cpu | cuda), threads (torch intra-op threads, 0 = default)

Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

TINY_SIZE = "tiny (128 wide, 2+2 blocks)"
TOP_KEYS = ("model", "dataset", "train", "output", "resume", "cache_dir", "device", "threads")
MODEL_KEYS = {"tiny": ("kind", "size", "seed"),
              "flux": ("kind", "unet", "weight_dtype", "clip_l", "t5", "vae")}
DATASET_KEYS = ("path", "layout", "min_quality", "target_width", "target_height", "reference_size",
                "prompt_template", "prompt_dropout", "condition_dropout", "seed")  # = DatasetSettings
RENAMED = {"target_size": "target_width and target_height", "cond_size": "reference_size",
           "cond_dropout": "condition_dropout"}  # dataset keys before Dec 2026
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """The config file is unreadable or names unknown / missing keys."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: dict
    dataset: dict
    train: dict
    output_dir: str
    name: str
    resume: str = "none"
    cache_dir: str | None = None
    device: str = "auto"
    threads: int = 0


def _section(data: dict, key: str, valid, required=()) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in '{key}': expected some of {list(valid)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ConfigError(f"'{key}' lacks {missing}")
    return dict(value)


def _model(data: dict, root: Path) -> dict:
    raw = data.get("model", "tiny")
    if raw == "tiny":
        raw = {"kind": "tiny"}
    kind = raw.get("kind", "flux") if isinstance(raw, dict) else None
    if kind not in MODEL_KEYS:
        raise ConfigError(f"model: expected 'tiny' or a mapping with kind tiny / flux, got {raw!r}")
    required = ("unet", "clip_l", "t5", "vae") if kind == "flux" else ()
    model = {"kind": kind, **_section({"model": raw}, "model", MODEL_KEYS[kind], required)}
    if kind == "tiny":
        model.setdefault("size", TINY_SIZE)
        model["seed"] = _integer(model.get("seed", 0), "model.seed")
        if not isinstance(model["size"], str):
            raise ConfigError(f"model.size: expected the name of a tiny size such as {TINY_SIZE!r}, "
                              f"got {model['size']!r}")
        return model
    model.setdefault("weight_dtype", "default")
    if model["weight_dtype"] not in WEIGHT_DTYPES:
        raise ConfigError(f"model.weight_dtype {model['weight_dtype']!r}: expected one of {WEIGHT_DTYPES}")
    for key in ("unet", "clip_l", "t5", "vae"):
        path = _path(model[key], root)
        if not Path(path).is_file():
            raise ConfigError(f"model.{key}: no such file '{path}'")
        model[key] = path
    return model


def _integer(value, key: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}: expected an integer >= {low}, got {value!r}")
    return value


def _path(value, root: Path) -> str:
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def _train(data: dict) -> dict:
    """TrainConfig fields; TrainConfig.from_mapping checks the names and values (the pack is
    importable only once the ComfyUI runtime is bootstrapped)."""
    value = data.get("train") or {}
    if not isinstance(value, dict):
        raise ConfigError(f"'train' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _override(data: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=10")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(text)


def load_config(path, overrides=()) -> RunConfig:
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of sections {TOP_KEYS}")
    for item in overrides:
        _override(data, item)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}: expected some of {list(TOP_KEYS)}")
    root = path.resolve().parent
    old = sorted(k for k in (data.get("dataset") or {}) if k in RENAMED)
    if old:
        raise ConfigError("dataset key(s) renamed: " + ", ".join(f"{k} -> {RENAMED[k]}" for k in old)
                          + " (the node, the YAML config and the trainer share one name per setting)")
    dataset = _section(data, "dataset", DATASET_KEYS, ("path",))
    dataset["path"] = _path(dataset["path"], root)
    output = _section(data, "output", ("dir", "name"))
    if data.get("device", "auto") not in DEVICES:
        raise ConfigError(f"device {data.get('device')!r}: expected one of {DEVICES}")
    resume = str(data.get("resume") or "none")
    if resume not in ("none", "latest"):
        resume = _path(resume, root)
    return RunConfig(
        model=_model(data, root), dataset=dataset, train=_train(data),
        output_dir=_path(output.get("dir", "musar_training"), root),
        name=str(output.get("name", "musar_dual_lora")), resume=resume,
        cache_dir=_path(data["cache_dir"], root) if data.get("cache_dir") else None,
        device=data.get("device", "auto"), threads=_integer(data.get("threads") or 0, "threads"))

