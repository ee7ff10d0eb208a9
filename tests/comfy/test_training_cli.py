"""``python -m musar_train``: data-parallel training under torchrun (2 gloo processes on CPU,
loopback) gives the LoRA and loss curve of one process with the same global batch; config errors
are reported without a traceback."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from musar_helpers import make_pairs
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the runtime took the repository root off sys.path (nodes/ would
    sys.path.append(str(ROOT))  # shadow ComfyUI's nodes.py); appended, ComfyUI's modules still win
from musar_train import cli  # noqa: E402

CONFIG = """model: tiny
dataset: {{path: pairs, target_width: 128, target_height: 64, reference_size: 64, seed: 0}}
train: {{steps: 6, learning_rate: 1.0e-2, noisy_rank: 4, subject_rank: 16, batch_size: {batch},
        checkpoint_every: 3, validation_every: 0}}
output: {{dir: {out}, name: lora}}
threads: 1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process run starts first (in the background); the 1-process run goes in process."""
    tmp = tmp_path_factory.mktemp("cli")
    make_pairs(tmp / "pairs")
    (tmp / "one.yaml").write_text(CONFIG.format(batch=2, out="one"))
    (tmp / "two.yaml").write_text(CONFIG.format(batch=1, out="two"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    proc = subprocess.Popen([*torchrun, "-m", "musar_train", "--config", str(tmp / "two.yaml")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code_one = cli.main(["--config", str(tmp / "one.yaml")])
    finally:
        torch.set_num_threads(threads)
    out, err = proc.communicate(timeout=600)
    return tmp, code_one, (proc.returncode, out, err)


def _losses(path: Path) -> list[float]:
    with open(path, encoding="utf-8") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_two_gloo_processes_train_the_same_lora_as_one(runs):
    tmp, code_one, (code_two, out, err) = runs
    assert code_one == 0
    assert code_two == 0, err[-3000:]
    assert out.count("saved ") == 1  # only process 0 writes the LoRA
    one, two = load_file(tmp / "one" / "lora.safetensors"), load_file(tmp / "two" / "lora.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    assert max(v.abs().max().item() for k, v in one.items() if k.endswith(".up")) > 1e-3
    assert _losses(tmp / "two" / "lora_loss.csv") == pytest.approx(_losses(tmp / "one" / "lora_loss.csv"), rel=1e-5)
    assert sorted(p.name for p in (tmp / "two" / "checkpoints").glob("*.safetensors")) == [
        "lora-step000003.safetensors", "lora-step000006.safetensors"]


def test_config_errors_are_reported_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\ndataset: {path: x}\nepochs: 3\n")
    assert cli.main(["--config", str(bad)]) == cli.EXIT_USAGE
    assert "unknown section(s) ['epochs']" in capsys.readouterr().err
    bad.write_text("model: tiny\ndataset: {path: x}\ntrain: {lr: 1}\n")
    assert cli.main(["--config", str(bad)]) == cli.EXIT_FAILED
    assert "unknown training setting(s) ['lr']" in capsys.readouterr().err


@pytest.mark.parametrize("text, code, words", [
    ("model: tiny\ndataset: {path: pairs}\nthreads: abc\n", cli.EXIT_USAGE, "threads: expected an integer"),
    ("model: tiny\ndataset: {path: pairs, target_size: 5}\n", cli.EXIT_USAGE,
     "target_size -> target_width and target_height"),
    ("model: {kind: tiny, size: huge}\ndataset: {path: pairs}\n", cli.EXIT_USAGE,
     "model.size 'huge': expected one of"),
    ("model: {kind: tiny, seed: x}\ndataset: {path: pairs}\n", cli.EXIT_USAGE, "model.seed"),
    ("model: tiny\ndataset: {path: pairs, prompt_template: '{desc_a:d}'}\n", cli.EXIT_FAILED,
     "DatasetError: prompt_template placeholder {desc_a:d}"),
])
def test_cli_config_errors_are_one_line_and_leave_no_temporary_folder(
        tmp_path, capsys, monkeypatch, text, code, words):
    make_pairs(tmp_path / "pairs", n_items=2)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (tmp_path / "bad.yaml").write_text(text + "output: {dir: out}\n")
    assert cli.main(["--config", str(tmp_path / "bad.yaml")]) == code
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.startswith("error: "), err
    assert list(scratch.iterdir()) == []


def test_ctrl_c_keeps_the_last_finished_step_and_the_run_resumes(tmp_path):
    """A real SIGINT to a real ``python -m musar_train`` while it trains: exit code 130, the last
    finished step checkpointed (past the step the progress bar showed), and ``resume: latest``
    finishes the run from there."""
    make_pairs(tmp_path / "pairs")
    config = CONFIG.format(batch=1, out="out").replace("steps: 6", "steps: 400").replace(
        "checkpoint_every: 3", "checkpoint_every: 1000")
    (tmp_path / "run.yaml").write_text(config)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "musar_train", "--config", str(tmp_path / "run.yaml")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seen, err = 0, ""
    while seen < 3:  # the bar on stderr: "training:  1%| | 3/400 ..."
        chunk = proc.stderr.read(1)
        assert chunk, f"musar_train ended before training 3 steps: {err[-2000:]}"
        err += chunk
        steps = re.findall(r"(\d+)/400", err[-200:])
        seen = int(steps[-1]) if steps else 0
    proc.send_signal(signal.SIGINT)
    err += proc.stderr.read()
    assert proc.wait(timeout=120) == cli.EXIT_STOPPED, err[-2000:]
    assert "Traceback" not in err and "Ctrl-C: stopping" in err
    kept = sorted((tmp_path / "out" / "checkpoints").glob("lora-step*.safetensors"))
    assert len(kept) == 1, err[-2000:]
    step = int(kept[0].stem.rsplit("step", 1)[1])
    assert 3 <= step < 400
    short = config.replace("steps: 400", f"steps: {step + 2}")
    (tmp_path / "resume.yaml").write_text(short + "resume: latest\n")
    done = subprocess.run([*cmd[:-1], str(tmp_path / "resume.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_losses(tmp_path / "out" / "lora_loss.csv")) == step + 2
