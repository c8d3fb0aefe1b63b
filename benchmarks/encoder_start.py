"""The encoder start: the same crops solved with and without E(x) among the best-of-N candidates, in one run.

The crops are the first ``--images`` of the cost benchmark's pool (``benchmarks/cost.py``: fresh-seed held-out
crops, shuffled, about half defective), solved at the prior's defaults without the triage (every image solved),
one batch of 16 at a time. The encoder is the prior's own, or one loaded from a training checkpoint
(``--checkpoint``: ``scripts/train_encoders.py`` / ``rgi train-prior`` leave one while they train). Prints per
variant: the median objective at the start and at the end, mean steps (adaptive stopping ends them), PSNR of the
restored defective crops, seconds.

Usage:
    python benchmarks/encoder_start.py [--prior brick-64] [--pool runs/cost] [--images 48]
                                       [--checkpoint runs/priors/brick.encoder-checkpoint] [--pool-of brick-64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rgi_core import invert
from rgi_core.evaluation.metrics import psnr
from rgi_core.inversion.config import config_for_prior
from rgi_core.priors import load_prior
from rgi_core.priors.encoder import Encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="brick-64")
    ap.add_argument("--pool", default="runs/cost")
    ap.add_argument("--pool-of", help="whose pool under --pool (default: --prior's name)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--checkpoint", help="an encoder training checkpoint (default: the prior's encoder)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    if args.checkpoint:
        state = torch.load(args.checkpoint, weights_only=False)
        enc = Encoder(prior.spec, int(state["config"]["width"]))
        enc.load_state_dict(state["encoder"])
        enc = enc.eval().requires_grad_(False)
        source = f"{args.checkpoint} (step {state['step']} of {state['config']['steps']})"
    elif prior.encoder is not None:
        enc, source = prior.encoder, f"{args.prior}'s own"
    else:
        raise SystemExit(f"{args.prior} carries no encoder; pass --checkpoint")
    pool = torch.load(Path(args.pool) / (args.pool_of or args.prior) / "pool.pt")
    x, ref, bad = pool["x"][: args.images], pool["ref"][: args.images], pool["label"][: args.images]
    base = config_for_prior("rgi", prior.defaults, triage=False, device="cpu")
    print(f"# {args.prior}: {len(x)} pool crops ({int(bad.sum())} defective), encoder {source}")
    print("| start | objective at start (median) | at the end (median) | steps (mean) | PSNR defective (dB) | s |")
    print("|---|---|---|---|---|---|")
    for name, use in (("best-of-N", False), ("best-of-N + E(x)", True)):
        prior.encoder = enc if use else None
        t0 = time.perf_counter()
        parts = [invert(x[i : i + 16], prior, base.replace(encoder=use)) for i in range(0, len(x), 16)]
        diags = [d for p in parts for d in p.diagnostics]
        restored = torch.cat([p.restored for p in parts])
        init = torch.tensor([d.init_loss for d in diags]).median()
        final = torch.tensor([d.final_loss for d in diags]).median()
        steps = sum(d.iterations for d in diags) / len(diags)
        print(f"| {name} | {init:.4f} | {final:.4f} | {steps:.0f} | {float(psnr(restored[bad], ref[bad]).mean()):.2f} "
              f"| {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
