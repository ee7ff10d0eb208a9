"""The pre-registered primary analysis (docs/TOY_WORLD.md §11.2) on synthetic per-case data: pooling
over LoRA seeds, the identity-clustered test and Holm's adjustment over the endpoints present."""

import numpy as np
import pytest

from toyworld import analysis, commit_weights, replication


def _cases(n: int, count: int, identities: int, rng) -> list[dict]:
    return [{"id": f"n{n}_{i}", "n": n, "subjects": [f"id{j}" for j in rng.choice(identities, n, replace=False)]}
            for i in range(count)]


def _data(cases, rates: dict, rng) -> dict:
    """Per (condition, case): "right" / "entangled" per subject drawn with the condition's rate."""
    return {(cond, c["id"]): {"right": list(rng.random(c["n"]) < rate),
                              "entangled": list(rng.random(c["n"]) < 1 - rate)}
            for cond, rate in rates.items() for c in cases}


def test_primary_pools_seeds_establishes_real_effects_and_adjusts_over_the_family():
    rng = np.random.default_rng(0)
    cases = _cases(3, 60, 12, rng) + _cases(4, 60, 12, rng)
    # (b) clearly beats (a); (d) makes the same images as (b): M3/M4 established, D3/D4 not
    seeds = [_data(cases, {"a": 0.3, "b": 0.7}, rng) for _ in replication.SEEDS]
    for data in seeds:
        data.update({("d", cid): m for (cond, cid), m in list(data.items()) if cond == "b"})
    rows = {r["id"]: r for r in analysis.primary({"M": (seeds, cases)})}
    assert set(rows) == {"M3", "M4", "D3", "D4"}  # no refeval records: R3/R4 left out, not invented
    for key in ("M3", "M4"):
        assert rows[key]["diff"] > 0.25 and rows[key]["lo"] > 0 and rows[key]["established"]
        assert rows[key]["p_holm"] >= rows[key]["p"]
    for key in ("D3", "D4"):
        assert rows[key]["diff"] == 0 and rows[key]["p_holm"] == 1 and not rows[key]["established"]
    # per case the mean over seeds: the pooled difference is the mean of the per-seed differences
    x, y, _ = analysis.pooled(seeds, cases, "right", ("b", "a"), 3)
    per_seed = [np.mean([np.mean(s[("b", c["id"])]["right"]) - np.mean(s[("a", c["id"])]["right"])
                         for c in cases if c["n"] == 3]) for s in seeds]
    assert float(np.mean(x - y)) == pytest.approx(float(np.mean(per_seed)))


def test_primary_uses_reference_routing_entanglement_and_skips_cases_missing_in_a_seed():
    rng = np.random.default_rng(1)
    cases = _cases(3, 40, 10, rng) + _cases(4, 40, 10, rng)
    ref = _data(cases, {"off": 0.4, "static": 0.8}, rng)  # static: less entangled
    rows = {r["id"]: r for r in analysis.primary({"R": ([ref], cases)})}
    assert set(rows) == {"R3", "R4"} and all(r["diff"] < 0 and r["established"] for r in rows.values())
    seeds = [_data(cases, {"a": 0.5, "b": 0.5, "d": 0.5}, rng) for _ in replication.SEEDS]
    del seeds[1][("b", cases[0]["id"])]
    x, _, clusters = analysis.pooled(seeds, cases, "right", ("b", "a"), 3)
    assert len(x) == 39 and len(clusters) == 39


def test_the_cache_study_family_and_its_agreement_check(tmp_path):
    import gzip
    import json

    rng = np.random.default_rng(2)
    cases = _cases(3, 40, 10, rng) + _cases(4, 40, 10, rng)
    data = _data(cases, {"off": 0.8, "isolated": 0.4}, rng)  # isolation costs
    data.update({("frozen", cid): m for (cond, cid), m in list(data.items()) if cond == "isolated"})
    rows = {r["id"]: r for r in analysis.primary({"C": ([data], cases)}, analysis.CACHE_PRIMARY)}
    assert set(rows) == {"I3", "I4", "F3", "F4"}
    assert all(rows[k]["diff"] < 0 and rows[k]["established"] for k in ("I3", "I4"))
    assert all(rows[k]["diff"] == 0 and not rows[k]["established"] for k in ("F3", "F4"))
    records = [{"condition": c, "id": "n3_0", "variant": v, "cells": cells}
               for c, v, cells in (("isolated", "main", "ab"), ("isolated_cached", "main", "ab"),
                                   ("isolated", "swap", "ab"), ("isolated_cached", "swap", "ba"))]
    with gzip.open(tmp_path / "records.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    check = replication.cell_maps_agree(tmp_path, "isolated_cached", "isolated")
    assert (check["images"], check["identical_cell_maps"]) == (2, 1)


def test_eval_side_by_side_splits_the_conditions_and_merges_before_publishing(tmp_path, monkeypatch):
    """``eval --jobs 2``: two processes whose conditions together are exactly the pre-registered
    ones, on the same cases, then one merge into the seed's eval folder, then the publication."""
    calls, published = [], []

    class Proc:
        def __init__(self, args, cwd):
            calls.append(args)

        def wait(self):
            return 0

    monkeypatch.setattr(replication, "seed_folder", lambda seed: tmp_path / f"seed{seed}")
    monkeypatch.setattr(replication.subprocess, "Popen", Proc)
    monkeypatch.setattr(replication.subprocess, "call", lambda args, cwd: calls.append(args) or 0)
    monkeypatch.setattr(replication, "publish", lambda src, dest: published.append(src))

    assert replication.evaluate(1, [], jobs=2) == 0

    def value(args, flag):
        return args[args.index(flag) + 1]

    *parts, merge, check = calls
    assert value(check, "--out") == value(merge, "--out") and value(check, "--conditions") == replication.CONDITIONS
    assert float(value(check, "--verify")) > 0
    conditions = [value(args, "--conditions").split(",") for args in parts]
    assert sorted(c for part in conditions for c in part) == sorted(replication.CONDITIONS.split(","))
    assert {value(args, "--seed") for args in calls} == {str(replication.CASE_SEED)}
    assert {value(args, "--counts") for args in calls} == {replication.COUNTS}
    assert merge[merge.index("--merge") + 1:] == [value(args, "--out") for args in parts]
    assert value(merge, "--out") == str(tmp_path / "seed1" / "eval") and published == [tmp_path / "seed1" / "eval"]


def test_a_partial_or_failed_eval_is_not_published(tmp_path, monkeypatch):
    monkeypatch.setattr(replication, "seed_folder", lambda seed: tmp_path / f"seed{seed}")
    monkeypatch.setattr(replication, "publish", lambda src, dest: pytest.fail("published"))
    monkeypatch.setattr(replication.subprocess, "call", lambda args, cwd: 0)
    assert replication.evaluate(0, ["--counts", "2:1"], jobs=1) == 0
    monkeypatch.setattr(replication.subprocess, "call", lambda args, cwd: 3)
    assert replication.evaluate(0, [], jobs=1) == 3


def test_committed_lora_keeps_each_product_to_fp16_precision_with_fewer_factors(tmp_path):
    """The demo's LoRAs are re-cut by SVD: a product of true rank 3 stored as rank-16 factors comes
    back with rank 3 and the same product to the tolerance; an all-zero pair is left out; a
    full-rank pair keeps its rank; the file loads through the pack's reader."""
    import torch

    from musar import lora as lora_io
    from musar import omini
    from musar.lora import DualLoRA, LoRAPair, save_dual_lora
    from musar.omini import load_lora_file

    g = torch.Generator().manual_seed(0)
    low = torch.randn(24, 3, generator=g) @ torch.randn(3, 16, generator=g)  # (out, r) of rank 3
    def full():
        return LoRAPair(torch.randn(8, 16, generator=g), torch.randn(24, 8, generator=g), scale=0.5)

    modules = {"double_blocks.0.img_attn.proj": (full(), LoRAPair(torch.randn(16, 16, generator=g), low)),
               "double_blocks.0.img_mlp.2": (full(), LoRAPair(torch.randn(16, 16, generator=g), torch.zeros(24, 16)))}
    src, dest = tmp_path / "src.safetensors", tmp_path / "dest.safetensors"
    save_dual_lora(src, DualLoRA(modules, {}))
    info = commit_weights._save_truncated_lora(src, dest, lora_io, omini)
    assert info["ranks_kept"] == {"double_blocks.0.img_attn.proj.noisy": [8, 8],
                                  "double_blocks.0.img_attn.proj.subject": [16, 3],
                                  "double_blocks.0.img_mlp.2.noisy": [8, 8],
                                  "double_blocks.0.img_mlp.2.subject": [16, 0]}
    before, after = load_lora_file(src), load_lora_file(dest)
    assert after.modules["double_blocks.0.img_mlp.2"][1] is None
    for name, pairs in after.modules.items():
        for old, new in zip(before.modules[name], pairs):
            if new is None:
                continue
            a, b = (p.up @ p.down * p.scale for p in (old, new))
            assert (a - b).norm() <= 2 * commit_weights.RANK_TOLERANCE * a.norm()


def test_install_moves_the_staged_files_only_within_the_budget(tmp_path):
    """commit-weights changes the committed folder only when the weights it would then hold fit the
    budget: a staged file replaces its namesake, other files count as they are."""
    stage, folder = tmp_path / "stage", tmp_path / "weights"
    stage.mkdir(), folder.mkdir()
    (folder / "kept.safetensors").write_bytes(b"k" * 40)
    (folder / "toy_flux.safetensors").write_bytes(b"o" * 500)
    (stage / "toy_flux.safetensors").write_bytes(b"n" * 50)
    (stage / "log.json").write_text("{}")
    with pytest.raises(SystemExit, match="over the"):
        commit_weights.install(stage, folder, budget=89)
    assert (folder / "toy_flux.safetensors").read_bytes() == b"o" * 500 and not (folder / "log.json").exists()
    assert commit_weights.install(stage, folder, budget=90) == 90
    assert (folder / "toy_flux.safetensors").read_bytes() == b"n" * 50 and (folder / "log.json").is_file()
    assert (folder / "kept.safetensors").is_file() and not any(stage.iterdir())


def test_each_seed_reports_its_own_difference_and_the_spread_over_seeds():
    """§11.2's secondary report: per LoRA seed the difference on that seed's cases alone, then the
    mean and the standard deviation (ddof 1) of those differences; one seed has no spread."""
    rng = np.random.default_rng(3)
    cases = _cases(2, 30, 10, rng) + _cases(3, 40, 10, rng) + _cases(4, 40, 10, rng)
    rates = [0.5, 0.7, 0.9]  # (b) gains 0.0, +0.2, +0.4 over (a) depending on the seed
    seeds = {s: (cases, _data(cases, {"a": 0.5, "b": rate, "c": rate}, rng))
             for s, rate in zip(replication.SEEDS, rates)}
    for _, data in seeds.values():
        data.update({("d", cid): m for (cond, cid), m in list(data.items()) if cond == "b"})
    rows = {(r["comparison"], r["n"]): r for r in analysis.per_seed(seeds)}
    assert set(rows) == {(f"{x} - {y}", n) for x, y in analysis.SEED_COMPARISONS for n in analysis.NS}
    row = rows[("b - a", 3)]
    own = [analysis.difference(([data], cases), "right", ("b", "a"), 3)["diff"] for _, data in seeds.values()]
    assert [row["seeds"][s]["diff"] for s in replication.SEEDS] == own
    assert own[0] < own[1] < own[2]  # the seeds really differ, so the spread is not zero
    assert row["mean"] == pytest.approx(np.mean(own)) and row["sd"] == pytest.approx(np.std(own, ddof=1))
    assert row["sd"] > 0.1
    assert rows[("d - b", 3)]["sd"] == 0 and rows[("d - b", 3)]["mean"] == 0  # (d) made (b)'s images
    single = analysis.per_seed({0: seeds[0]})
    assert all(r["sd"] is None and set(r["seeds"]) == {0} for r in single)


def _row(id_, diff, established, lo=None, hi=None):
    return {"id": id_, "diff": diff, "established": established, "lo": lo, "hi": hi}


def _sec(comparison, n, diff, lo, hi):
    return {"comparison": comparison, "n": n, "diff": diff, "lo": lo, "hi": hi}


def test_the_decision_rules_follow_the_registered_text():
    """§11.3's rules 3 and 4 on the inputs each outcome needs, and a rule whose inputs are missing
    waits instead of deciding."""
    def rule(rows, second, number):
        return next(r for r in analysis.decisions(rows, second) if r["rule"] == number)

    m_ok = [_row("M3", 0.2, True), _row("M4", 0.1, True)]
    c_worse = [_sec("c - b", n, -0.1, -0.15, -0.05) for n in (3, 4)]
    c_mixed = [_sec("c - b", 3, -0.1, -0.15, -0.05), _sec("c - b", 4, -0.01, -0.05, 0.03)]
    d_up = [_row("D3", 0.1, True), _row("D4", 0.05, True)]
    d_half = [_row("D3", 0.1, True), _row("D4", 0.05, False)]
    assert "single" in rule(m_ok + d_up, c_worse, 3)["decision"]
    assert "off by default" in rule(m_ok + d_half, c_worse, 3)["decision"]
    assert "stay" in rule(m_ok + d_half, c_mixed, 3)["decision"]
    assert "confirms" in rule(m_ok, [], 4)["decision"]
    assert "failure" in rule([_row("M3", 0.2, True), _row("M4", -0.1, True)], [], 4)["decision"]
    waiting = rule(m_ok, c_worse, 3)
    assert waiting["decision"] is None and waiting["waiting_for"] == ["D3", "D4"]
    assert rule([], [], 4)["waiting_for"] == ["M3", "M4"]
    r_rows = [_row("R3", 0.0, False), _row("R4", 0.0, False)]
    harmless = [_sec("static - off", n, 0.0, -0.01, 0.01) for n in (3, 4)]
    costly = [_sec("static - off", 3, -0.05, -0.08, -0.02), harmless[1]]
    assert "stays on" in rule(r_rows, harmless, 1)["decision"]
    assert "becomes off" in rule(r_rows, costly, 1)["decision"]
    assert "increases" in rule([_row("R3", 0.1, True), _row("R4", 0.0, False)], harmless, 1)["decision"]
    dyn = [_sec("dynamic - static", n, -0.4, -0.45, -0.35) for n in (3, 4)]
    assert "default off" in rule([], dyn, 2)["decision"]


def test_analyse_writes_the_family_the_seeds_and_the_rules_from_the_published_records(tmp_path, monkeypatch):
    """``analyse`` from published evaluations only: with two of three seeds the MUSAR endpoints are
    left out (not pooled over fewer seeds) but each seed's own table is there; with all three the
    six endpoints, Holm over six, and rules 3 and 4 decided."""
    import json

    rng = np.random.default_rng(4)
    cases = _cases(2, 20, 10, rng) + _cases(3, 40, 10, rng) + _cases(4, 40, 10, rng)
    monkeypatch.setattr(replication, "RESULTS", tmp_path)
    published = {replication.seed_results(s): (cases, _data(cases, {"a": 0.3, "b": 0.8, "c": 0.5, "d": 0.8}, rng))
                 for s in replication.SEEDS}
    published[replication.ref_results()] = (cases, _data(cases, {"off": 0.9, "static": 0.9, "dynamic": 0.5}, rng))
    monkeypatch.setattr(replication, "read_eval", lambda folder: published.get(folder))
    missing = published.pop(replication.seed_results(2))
    assert replication.analyse() == 0
    data = json.loads((tmp_path / "primary.json").read_text())
    assert [r["id"] for r in data["endpoints"]] == ["R3", "R4"]
    assert {s for r in data["per_seed"] for s in r["seeds"]} == {"0", "1"}
    assert [r["decision"] is None for r in data["decisions"]] == [False, False, True, True]
    published[replication.seed_results(2)] = missing
    assert replication.analyse() == 0
    data = json.loads((tmp_path / "primary.json").read_text())
    rows = {r["id"]: r for r in data["endpoints"]}
    assert set(rows) == {"R3", "R4", "M3", "M4", "D3", "D4"}
    assert rows["M3"]["established"] and rows["M3"]["diff"] > 0.3
    assert all(r["sd"] is not None for r in data["per_seed"])
    text = (tmp_path / "primary.md").read_text()
    assert "6 present" in text and "confirms" in text and "| seed 2 |" in text


def test_saved_toy_weights_have_the_same_bytes_whatever_the_metadata_order(tmp_path):
    """The committed files' digests are reproducible: the same tensors and metadata, given in
    different orders (safetensors' own header order changes from map to map), give the same bytes,
    and the file reads back through safetensors."""
    import torch
    from safetensors import safe_open

    from toyworld import common

    tensors = {f"w{i}": torch.arange(i + 3, dtype=torch.float16) for i in range(5)}
    meta = {f"musar.key{i}": str(i * 7) for i in range(40)}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common.save_safetensors(tensors, first, meta)
    common.save_safetensors(dict(reversed(tensors.items())), second, dict(reversed(meta.items())))
    assert first.read_bytes() == second.read_bytes()
    with safe_open(str(first), "pt") as f:
        assert f.metadata() == meta and all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())
    assert int.from_bytes(first.read_bytes()[:8], "little") % 8 == 0
