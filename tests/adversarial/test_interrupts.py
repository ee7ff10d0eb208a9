"""POST /interrupt from a client at seeded random moments, during sampling and during training.

The moment is chosen from the server's own websocket progress: after a random sampler step, or
after a random training step plus a random fraction of a step (so the cancel lands inside a
forward / backward, a validation sampling or between steps).

Sampling: the prompt ends interrupted and the good prompt afterwards gives its solo images.
Training: the run ends interrupted; its newest checkpoint is the last finished step k (no partial
file), and resuming it to k + 2 steps saves the same LoRA, bit for bit, as a straight k + 2 run.
"""

from __future__ import annotations

import random
import time

import torch
from graphs import SAMPLER, assert_good, generation, training

from musar.lora import read_safetensors
from musar.train import read_checkpoint

EVERY = {"validation_every": 8, "checkpoint_every": 5}  # validation sampling: a cancel may land there


def test_interrupt_during_sampling_then_the_good_prompt_is_unchanged(client, solo):
    rng = random.Random(5)
    for trial in range(3):
        long_run = generation(seed=7 + trial)
        long_run[SAMPLER]["inputs"]["steps"] = 100
        prompt_id, target = client.queue(long_run), rng.randint(1, 60)

        def reached(kind, data, prompt_id=prompt_id, target=target):
            return kind == "progress" and data.get("prompt_id") == prompt_id \
                and data.get("node") == SAMPLER and data["value"] >= target

        client.events.wait_for(reached)
        client.interrupt()
        outcome = client.wait(prompt_id)
        assert outcome.kind == "interrupted", outcome
        assert_good(client, solo, seed=1 + trial % 2)


def _saved(client, outcome) -> dict:
    text = outcome.outputs["22"]["text"][0]
    assert text.startswith("saved loras/"), text
    return read_safetensors(client.server.base / "models" / "loras" / text[len("saved loras/"):])[0]


def test_interrupt_during_training_keeps_the_last_finished_step_and_resumes_bit_identically(
        client, world, solo):
    rng, outcomes = random.Random(9), []
    runs = world["base"] / "output" / "musar_training"
    for trial in range(3):
        name = f"cancelled_{trial}"
        since, target, fraction = client.events.mark(), rng.randint(1, 20), rng.random()
        prompt_id = client.queue(training(steps=30, output_name=name, **EVERY))

        def reached(kind, data, target=target):
            return kind == "musar.train.progress" and data["node"] == "21" and data["step"] >= target

        started = client.events.wait_for(reached, since)
        time.sleep(fraction * 0.1)  # about a step on the tiny model: lands inside the next one
        client.interrupt()
        outcome = client.wait(prompt_id)
        assert outcome.kind == "interrupted", outcome
        files = sorted((runs / name).glob("*.safetensors"))
        assert files and not list((runs / name).glob(".*")), files  # no partial file left
        k = read_checkpoint(files[-1]).step
        assert k >= started["data"]["step"] and len(read_checkpoint(files[-1]).losses) == k
        resumed = client.run(training(steps=k + 2, output_name=name, resume="latest", **EVERY))
        straight = client.run(training(steps=k + 2, output_name=f"straight_{trial}", **EVERY))
        assert resumed.kind == straight.kind == "success", (resumed, straight)
        a, b = _saved(client, resumed), _saved(client, straight)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        outcomes.append(f"cancelled after step {k} (asked after {target} + {fraction:.2f}), resumed bit-identically")
    print("training cancel trials:", outcomes)
    assert_good(client, solo, seed=1)
