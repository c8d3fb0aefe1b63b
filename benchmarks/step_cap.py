"""The step cap after the encoder start, chosen on validation crops: the rows y >= 384 of the prior's training split
(the calibration's held-out rows), not the cost benchmark's images.

Every crop is solved (no triage): the full solve (best-of-N, no stopping, 2000 steps) and the defaults without the
triage (the encoder start, adaptive stopping) at each cap. Printed per variant: mean steps, PSNR of the restored
defective crops against their clean originals and of the clean ones, image AUROC of the score. The rule, fixed
before the caps were scored: the smallest cap whose defective PSNR is within 0.5 dB of the full solve's and whose
image AUROC is no more than 0.01 below it.

``--n-inits``: the defaults (the prior's stored cap included) with fewer random candidates beside the encoder start,
``n1`` being the encoder alone. The same rule, fixed before they were scored, picks the smallest candidate count.

``--stop-tols``: the defaults with another adaptive-stopping tolerance (``stop_tol``; 0 runs every step). The same
rule picks the largest tolerance.

Usage: python benchmarks/step_cap.py [--prior brick-64] [--n 24] [--caps 300 500 800] [--n-inits 1 10 100]
                                     [--stop-tols 0.005 0.001]
                                     [--variants full 300 n10 ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from rgi_core import invert
from rgi_core.evaluation.families import apply_family_batch, families_for
from rgi_core.evaluation.labelled import random_crops
from rgi_core.evaluation.metrics import image_auroc, psnr
from rgi_core.inversion.config import config_for_prior
from rgi_core.io import builtin
from rgi_core.priors import load_prior

VAL_ROWS = 384  # as benchmarks/generalisation.py: validation crops come from rows y >= 384 of the training split
SEED = 77_000  # used by no calibration, selection or test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="brick-64")
    ap.add_argument("--n", type=int, default=24, help="defective crops (one family each, in turn), as many clean")
    ap.add_argument("--caps", type=int, nargs="+", default=[300, 500, 800])
    ap.add_argument("--n-inits", type=int, nargs="*", default=[], help="candidate counts beside the encoder start")
    ap.add_argument("--stop-tols", type=float, nargs="*", default=[], help="adaptive-stopping tolerances to try")
    ap.add_argument("--variants", nargs="+", help="a subset: full, defaults, caps, nN or tT (to split the work)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    region = torch.from_numpy(builtin.texture(args.prior.split("-")[0], "train"))[:, VAL_ROWS:]
    fams, size = families_for(prior.spec.channels), prior.spec.resolution
    orig = random_crops(region, args.n, size, SEED + 1)
    bad = torch.cat([apply_family_batch(orig[i : i + 1], fams[i % len(fams)], seed=SEED + 100 + i)[0]
                     for i in range(args.n)])
    good = random_crops(region, args.n, size, SEED + 2)
    x, ref = torch.cat([bad, good]), torch.cat([orig, good])
    label = torch.cat([torch.ones(args.n), torch.zeros(args.n)]).bool()
    base = config_for_prior("rgi", prior.defaults, triage=False, device="cpu")
    variants = {"full": base.replace(encoder=False, stop_tol=0.0), "defaults": base,
                **{str(c): base.replace(iterations=c) for c in args.caps},
                **{f"n{n}": base.replace(n_init=n) for n in args.n_inits},
                **{f"t{t:g}": base.replace(stop_tol=t) for t in args.stop_tols}}
    print(f"# {args.prior}: {args.n} defective + {args.n} clean validation crops, every crop solved")
    print("| variant | steps (mean) | PSNR defective dB | PSNR clean dB | image AUROC | s |")
    print("|---|---|---|---|---|---|")
    for name in args.variants or list(variants):
        t0 = time.perf_counter()
        rs = [invert(x[i : i + 16], prior, variants[name]) for i in range(0, len(x), 16)]
        score, restored = torch.cat([r.score for r in rs]), torch.cat([r.restored for r in rs])
        steps = torch.tensor([d.iterations for r in rs for d in r.diagnostics]).float()
        p = torch.stack([psnr(restored[i : i + 1], ref[i : i + 1]) for i in range(len(x))]).flatten()
        label_ = (name if name in ("full", "defaults") else f"best of {name[1:]}" if name[0] == "n"
                  else f"stop_tol {name[1:]}" if name[0] == "t" else f"cap {name}")
        print(f"| {label_} | {steps.mean():.0f} | "
              f"{p[label].mean():.2f} | {p[~label].mean():.2f} | {image_auroc(score, label):.3f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
