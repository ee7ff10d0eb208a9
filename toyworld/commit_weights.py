"""``python -m toyworld.replication commit-weights``: the demo's and the tests' models written into
the committed folder toyworld/weights (issue 21's 20 MB budget): the medium base and the seed-0
LoRAs in fp16, each LoRA pair re-cut by SVD to fp16 precision, staged and gate-measured first,
moved in only within the budget."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import common
from .replication import seed_folder

WEIGHTS_BUDGET = 20_000_000  # bytes of committed *.safetensors in toyworld/weights (issue 21)
COMMITTED_SEED = 0  # the LoRAs of this training seed are the demo's (the recipe's own seed)


RANK_TOLERANCE = 2.0 ** -11  # fp16's unit roundoff: a cut this small is below what fp16 storage loses


def _save_half(src: Path, dest: Path) -> dict:
    """``src`` with every floating tensor in fp16 (metadata kept) -> ``dest``."""
    import torch
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    common.save_safetensors({k: t.to(torch.float16) if t.is_floating_point() else t
                             for k, t in tensors.items()}, dest, meta)
    return {"source_dtypes": dtypes, "stored": "float16"}


def _save_truncated_lora(src: Path, dest: Path, lora_io, omini) -> dict:
    """Every LoRA pair of ``src`` re-factored by SVD of its product (scale folded in) and cut to the
    fewest singular values whose left-out part has a Frobenius norm ≤ ``RANK_TOLERANCE`` × the
    product's: the delta changes by no more than fp16 rounding changes it. ``lora_io`` / ``omini``:
    the pack's musar.lora / musar.omini. Returns the ranks kept."""
    import dataclasses

    import torch

    lora, kept, params = omini.load_lora_file(src), {}, [0, 0]
    modules = {}
    for name, pairs in lora.modules.items():
        cut = []
        for branch, pair in zip(("noisy", "subject"), pairs):
            if pair is None:
                cut.append(None)
                continue
            delta = (pair.up.double() * pair.scale) @ pair.down.double()
            u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
            sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))  # one sign per pair: same
            u, vh = u * sign, vh * sign.T  # bytes whichever LAPACK path (thread count) ran the SVD
            tail = torch.sqrt(torch.flip(torch.cumsum(torch.flip(sv ** 2, [0]), 0), [0]))  # tail[i]: norm of sv[i:]
            fits = torch.nonzero(tail <= RANK_TOLERANCE * tail[0]).flatten()
            rank = min(int(fits[0]) if len(fits) else pair.rank, pair.rank)
            root = torch.sqrt(sv[:rank])  # rank 0: the product is exactly zero (e.g. an output never read)
            cut.append(dataclasses.replace(pair, down=(root[:, None] * vh[:rank]).float(),
                                           up=(u[:, :rank] * root).float(), scale=1.0) if rank else None)
            kept[f"{name}.{branch}"] = [pair.rank, rank]
            params[0] += pair.rank * sum(delta.shape)
            params[1] += rank * sum(delta.shape)
        if any(cut):
            modules[name] = tuple(cut)
    lora_io.save_dual_lora(dest, dataclasses.replace(lora, modules=modules))
    return {"rank_tolerance": RANK_TOLERANCE, "ranks_kept": kept, "parameters": params}


def _passed(gate: Path) -> bool:
    return gate.is_file() and json.loads(gate.read_text())["passed"]


def install(stage: Path, folder: Path, budget: int = WEIGHTS_BUDGET) -> int:
    """Move every file of ``stage`` into ``folder`` if the weights (*.safetensors) the folder then
    holds stay within ``budget`` bytes; otherwise refuse and leave ``folder`` as it was. Returns
    the folder's weight bytes."""
    staged = {p.name: p for p in stage.iterdir() if p.is_file()}
    total = sum(p.stat().st_size for p in staged.values() if p.suffix == ".safetensors")
    total += sum(p.stat().st_size for p in folder.glob("*.safetensors") if p.name not in staged)
    if total > budget:
        raise SystemExit(f"commit-weights: {folder} would hold {total / 1e6:.2f} MB of weights, over the "
                         f"{budget / 1e6:.0f} MB budget; nothing was changed")
    for name, path in staged.items():
        os.replace(path, folder / name)
    return total


def commit_weights() -> int:
    """Write the demo's models into the committed folder toyworld/weights: the medium base (its
    gate must have passed) and the seed-0 LoRAs of both arms (gated), every floating tensor in
    fp16, with their training logs and gates; the multi-reference base already there stays.
    Everything is made and measured in a staging folder first; the committed folder changes only
    when the result fits ``WEIGHTS_BUDGET``. ``weights.json`` records each file's source, its
    digest, what was converted and each LoRA's gate measured again on the converted files (the
    same cases as its training gate)."""
    from .eval import model_digests
    from .gate import lora_gate

    base_dir, lora_dir = common.run_folders("medium")[0], seed_folder(COMMITTED_SEED) / "weights"
    arms = ("static", "dense")
    models = [base_dir / "toy_flux.safetensors"] + [lora_dir / f"toy_lora_{a}.safetensors" for a in arms]
    sides = [base_dir / name for name in ("toy_codec.safetensors", "toy_text_encoder.safetensors",
                                          "train_base_log.json", "base_gate.json")]
    sides += [lora_dir / name for a in arms for name in (f"train_lora_{a}_log.json", f"lora_gate_{a}.json")]
    missing = [str(p) for p in models + sides if not p.is_file()]
    if missing:
        raise SystemExit("commit-weights: missing " + ", ".join(missing) + " (train the medium base and "
                         f"the seed-{COMMITTED_SEED} LoRAs first: make replicate SEEDS={COMMITTED_SEED})")
    failed = [str(g) for g in [base_dir / "base_gate.json"] + [lora_dir / f"lora_gate_{a}.json" for a in arms]
              if not _passed(g)]
    if failed:
        raise SystemExit("commit-weights: these gates did not pass: " + ", ".join(failed))
    stage = common.CACHE_DIR / "commit_stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    converted, pack = {}, common.setup(threads=1)
    for src in models:
        dest = stage / src.name
        info = {"source": str(src.relative_to(common.ROOT)), "source_digest": model_digests([src])[src.name]}
        if src.name.startswith("toy_lora_"):  # factors re-cut to the rank fp16 can tell apart, then fp16
            info.update(_save_truncated_lora(src, dest, *(common.module(pack, f"musar.{m}") for m in ("lora", "omini"))))
            src = dest
        info.update(_save_half(src, dest))
        converted[dest.name] = {**info, "digest": model_digests([dest])[dest.name]}
    for src in sides:
        shutil.copyfile(src, stage / src.name)
    for attention in arms:  # the gate again, on the converted (cut, fp16) files
        name, work = f"toy_lora_{attention}.safetensors", common.CACHE_DIR / f"commit_gate_{attention}"
        shutil.rmtree(work, ignore_errors=True)  # a measurement of these files, never an earlier run's records
        gate = lora_gate(stage, stage / name, attention, work, threads=2)
        converted[name]["gate_on_committed_files"] = gate
        print(f"{name}: gate on the committed files {gate['summary']}")
    total = install(stage, common.WEIGHTS_DIR)
    common.write_json({"files": converted, "weights_bytes": total, "budget_bytes": WEIGHTS_BUDGET},
                      common.WEIGHTS_DIR / "weights.json")
    print(f"committed weights: {total / 1e6:.2f} MB of {WEIGHTS_BUDGET / 1e6:.0f} MB")
    return 0
