"""Train the natively multi-reference toy base: the toy FLUX.1-architecture model taught, with
dense attention, to take 1-4 reference pictures as ComfyUI ``ReferenceLatent`` tokens ("index"
method) and put each where the prompt says ("image 2 at top right"), then measure its gate
(``toyworld.refgate``, through the real ComfyUI graph).

    python -m toyworld.train_refbase                    # -> .cache/toyworld/refbase (make toy-refbase)
    python -m toyworld.train_refbase --steps 20 --no-gate --out /tmp/x --work /tmp/xw   # smoke

One sample's forward is exactly what ComfyUI's ``Flux._forward`` computes for a sampler call with
``ref_latents`` and ``ref_latents_method="index"`` (a tier-2 test checks it): the canvas tokens,
then each reference's tokens appended after them, with ids (0, row, col) for the canvas and
(j, row, col) for reference j; every token modulated with the sampling timestep (stock FLUX.1);
the velocity read off the canvas tokens. It is ``musar.flux_forward.musar_forward`` with no
subjects and ``TokenLayout(prompt, x_len=canvas, extra_len=references)``. In a batch the
references of a sample with fewer than the batch's most are padding, hidden as keys (as padded
prompt tokens are), so they change nothing.

Data: ``toyworld.multiref.step_batch`` (scenes of training-split identities, seeded by (seed,
step)); initial weights, optimiser, learning-rate schedule, EMA, checkpoints and the model file
are ``toyworld.train_base``'s (imported, not copied). Deterministic and resumable: a checkpoint is
written every ``--checkpoint-every`` steps to ``<work>/refbase_ckpt.safetensors``; a rerun with
the same settings continues from it. Output in ``--out``: toy_codec, toy_ref_text_encoder (made
once), toy_flux_refs.safetensors (EMA weights, fp16, config in the metadata),
train_refbase_log.json, refbase_gate.json; ``<work>/gates.jsonl`` holds the gates measured during
the run (``--gate-every``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from . import common
from .common import module, run_script, save_safetensors
from .data import ToyEncoders
from .multiref import (
    DROPOUT,
    MAX_REFS,
    REF_MODEL_FILE,
    REF_TOKENS,
    REF_WORDS,
    SUBJECT_COUNTS,
    canvas_ids,
    reference_ids,
    step_batch,
)
from .train_base import (
    SIZES,
    Run,
    init_model,
    masked_attention,
    text_batch,
    train_and_gate,
)
from .world import BLOCK

OUT = common.CACHE_DIR / "refbase"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=common.BASE_SIZES, default="small", help="model shape (train_base.SIZES)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--work", type=Path, help="default: <out>/run")
    p.add_argument("--steps", type=int, default=12000, help="[chosen: ~2 h at 0.55-0.65 s/step on one thread]")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--dropout", type=float, default=DROPOUT, help="share of unconditional samples (empty "
                   "prompt, no references: the graph's negative)")
    p.add_argument("--t-sampling", choices=("uniform", "logit-normal"), default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--gate-every", type=int, default=2000, help="also measure the gate on the EMA weights "
                   "every N steps (<work>/gates.jsonl); 0 = never")
    p.add_argument("--no-gate", action="store_true", help="skip the gate after training")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this many steps of this session "
                   "(checkpointed; rerun to continue)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.work = args.work or args.out / "run"
    return args


def ref_toy_files(pack, out: Path):
    """Codec and the multi-reference text encoder: loaded from ``out`` when present, else made there."""
    toy = module(pack, "nodes.testing.toy")
    if not (out / toy.CODEC_FILE).is_file():
        save_safetensors(module(pack, "toyworld.codec").CellCodec.for_world(0).state_dict(), out / toy.CODEC_FILE)
    if not (out / toy.REF_TEXT_FILE).is_file():
        encoder = module(pack, "toyworld.textenc").ToyTextEncoder(seed=0, extra_words=REF_WORDS)
        save_safetensors(encoder.state_dict(), out / toy.REF_TEXT_FILE)
    return toy.build_clip(toy.load_text_encoder(out, toy.REF_TEXT_FILE)), toy.build_vae(toy.load_codec(out))


def predict(pack, dm, x, refs, counts, ctx, valid, pooled, t) -> torch.Tensor:
    """Velocity of the canvas tokens, (B, canvas, C*4). ``x`` (B, canvas, C*4) noisy canvas tokens,
    ``refs`` (B, R * 9, C*4) the tokens of R references (sample i uses its first ``counts[i]``),
    ``ctx`` / ``valid`` / ``pooled`` the prompt (``train_base.text_batch``), ``t`` (B,)."""
    ff, lay = module(pack, "musar.flux_forward"), module(pack, "musar.layout")
    b, r = x.shape[0], refs.shape[1]
    ids = torch.cat([canvas_ids(), reference_ids(r // REF_TOKENS)]).expand(b, -1, -1)
    ref_valid = torch.arange(r)[None] // REF_TOKENS < torch.as_tensor(counts)[:, None]
    key_mask = torch.cat([valid, torch.ones(b, x.shape[1], dtype=torch.bool), ref_valid], 1)
    inp = ff.ForwardInputs(torch.cat([x, refs], 1), ids, ctx, [], x.new_zeros(1, 0, x.shape[-1]),
                           ids.new_zeros(0, 3), t, pooled, None)
    layout = lay.TokenLayout(ctx.shape[1], x.shape[1], extra_len=r)
    return ff.musar_forward(dm, inp, layout, attn=masked_attention(key_mask))


def ref_tokens(pack, enc: ToyEncoders, refs, counts) -> torch.Tensor:
    """(B, R * 9, C*4) tokens of the references (R = the batch's most), from their cells."""
    b, r = len(counts), int(max(counts, default=0))
    if r == 0:
        return torch.zeros(b, 0, enc.table.shape[1] * 4)
    tokens, _ = module(pack, "musar.layout").pack_latent(enc.latents(refs[:, :r].reshape(b * r, BLOCK, BLOCK)))
    return tokens.reshape(b, r * REF_TOKENS, -1)


def step_inputs(args, world, enc: ToyEncoders, step: int):
    """The seeded step: (batch, x0 latents, t (B,), noise)."""
    batch = step_batch(world, args.seed, step, args.batch, args.dropout)
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    x0 = enc.latents(batch.cells)
    u = torch.rand(x0.shape[0], generator=g) if args.t_sampling == "uniform" else \
        torch.sigmoid(torch.randn(x0.shape[0], generator=g))
    return batch, x0, u, torch.randn(x0.shape, generator=g)


def loss_of(pack, dm, enc: ToyEncoders, batch, x0, t, noise) -> torch.Tensor:
    lay = module(pack, "musar.layout")
    tt = t[:, None, None, None]
    x, _ = lay.pack_latent((1 - tt) * x0 + tt * noise)
    target, _ = lay.pack_latent(noise - x0)
    ctx, valid, pooled = text_batch(enc, batch.prompts)
    refs = ref_tokens(pack, enc, batch.refs, batch.counts)
    return F.mse_loss(predict(pack, dm, x, refs, batch.counts, ctx, valid, pooled, t), target)


def settings_of(args) -> dict:
    keep = ("size", "steps", "batch", "lr", "warmup", "ema", "dropout", "t_sampling", "seed")
    data = {"subject_counts": list(SUBJECT_COUNTS), "max_refs": MAX_REFS, "ref_tokens": REF_TOKENS,
            "ref_method": "index"}
    return {"model": SIZES[args.size], "data": data, **{k: getattr(args, k) for k in keep}}


def train(args) -> dict:
    pack = common.setup(threads=args.threads)
    world = module(pack, "toyworld.world").World(seed=0)
    clip, vae = ref_toy_files(pack, args.out)
    model, dm, config = init_model(pack, args.size, args.seed)
    enc = ToyEncoders(pack, model, clip, vae)
    toy = module(pack, "nodes.testing.toy")

    def loss(step: int) -> torch.Tensor:
        return loss_of(pack, dm, enc, *step_inputs(args, world, enc, step))

    run = Run(loss, args.work / "refbase_ckpt.safetensors", settings_of(args), REF_MODEL_FILE,
              (toy.CODEC_FILE, toy.REF_TEXT_FILE), "train_refbase_log.json",
              module(pack, "toyworld.refgate").ref_gate, "refbase_gate.json", "refbase")
    return train_and_gate(args, pack, dm, config, run)


def main(argv=None) -> int:
    return run_script(parse, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
