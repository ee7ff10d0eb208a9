"""Bad command lines and configs for both CLIs: ``python -m musar_train`` and ``python -m
musar_run`` (used by test_cli.py). Each must print one clear ``error: ...`` (or the validation
summary) without a Python traceback, exit with its documented code and leave no temporary
folder behind. The processes run concurrently with the server cases (the conftest starts them
with the server), each with its own TMPDIR; the ones that boot ComfyUI take ~10 s each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from files import ROOT
from musar_helpers import make_pairs

TRAIN_OK = ("model: tiny\ndataset: {path: pairs, target_width: 128, target_height: 64, reference_size: 64}\n"
            "train: {steps: 1}\n")
CASES = {  # id: (argv after python, config text or None, exit code, stderr regex)
    "train-threads-text": (["-m", "musar_train", "--config", "{cfg}"], TRAIN_OK + "threads: abc\n", 2,
                           r"^error: threads: expected an integer >= 0, got 'abc'"),
    "train-target-size-scalar": (["-m", "musar_train", "--config", "{cfg}"],
                                 "model: tiny\ndataset: {path: pairs, target_size: 5}\n", 2,
                                 r"^error: dataset key\(s\) renamed: target_size -> target_width and target_height"),
    "train-unknown-section": (["-m", "musar_train", "--config", "{cfg}"], TRAIN_OK + "epochs: 3\n", 2,
                              r"^error: unknown section\(s\) \['epochs'\]"),
    "train-device-unknown": (["-m", "musar_train", "--config", "{cfg}"], TRAIN_OK + "device: tpu\n", 2,
                             r"^error: device 'tpu'"),
    "train-override-malformed": (["-m", "musar_train", "--config", "{cfg}", "--set", "train.steps"], TRAIN_OK,
                                 2, r"^error: --set 'train.steps': expected KEY=VALUE"),
    "train-config-missing": (["-m", "musar_train", "--config", "{tmp}/nowhere.yaml"], None, 2,
                             r"^error: cannot read config"),
    "train-no-arguments": (["-m", "musar_train"], None, 2, r"required: --config"),
    "train-tiny-size-unknown": (["-m", "musar_train", "--config", "{cfg}"],
                                TRAIN_OK + "model: {kind: tiny, size: enormous}\n", 2,
                                r"^error: model.size 'enormous': expected one of"),
    "train-steps-zero": (["-m", "musar_train", "--config", "{cfg}", "--set", "train.steps=0"], TRAIN_OK, 4,
                         r"^error: TrainingError: steps: expected a whole number from 1 to \d+, got 0"),
    "run-workflow-missing": (["-m", "musar_run", "{tmp}/nowhere.json"], None, 2, r"^error: cannot read workflow"),
    "run-workflow-not-json": (["-m", "musar_run", "{cfg}"], "{not json", 2, r"^error: cannot read workflow"),
    "run-standin-and-file": (["-m", "musar_run", "workflows/musar_two_subjects.json", "--tiny", "--unet", "x"],
                             None, 2, r"cannot be combined with model files"),
    "run-dataset-path-escape": (["-m", "musar_run", "workflows/musar_train_dual_lora.json", "--tiny",
                                 "--set", "5.path=/etc"], None, 3,
                                r"The workflow does not validate:[\s\S]*not inside the folders"),
}
SLOW = ("train-tiny-size-unknown", "train-steps-zero", "run-dataset-path-escape")  # boot ComfyUI


def start() -> dict:
    """Start every case's process at once (the tier's conftest does it when the server starts)."""
    top = Path(tempfile.mkdtemp(prefix="musar-adversarial-cli-"))
    make_pairs(top / "pairs")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    procs = {}
    for case, (argv, config, _, _) in CASES.items():
        tmp = top / case
        tmp.mkdir()
        cfg = top / f"{case}.yaml"
        if config is not None:
            cfg.write_text(config)
        args = [a.format(cfg=cfg, tmp=tmp) for a in argv]
        procs[case] = (subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**env, "TMPDIR": str(tmp)},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), tmp)
    return procs


def finish(procs: dict) -> dict:
    """{case: (exit code, stderr, names left in its TMPDIR)}."""
    results = {}
    for case, (proc, tmp) in procs.items():
        _, err = proc.communicate(timeout=600)
        results[case] = (proc.returncode, err, sorted(p.name for p in tmp.iterdir()))
    return results
