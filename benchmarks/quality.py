"""Quality of the shipped priors on held-out data with synthetic defects (the numbers in docs/quality.md).

Every method inverts the same images in one run; texture sets also print one row per defect kind.
Textures: 64x64 crops of the right quarter (never trained on), half clean, half with one defect each. Digits:
held-out images 1500.. with 10-25 % gross corruption.
``--defects novel`` gives the texture crops the second set of kinds (:data:`rgi_core.evaluation.defects.NOVEL_DEFECTS`)
instead, to check that the defaults generalise beyond the standard five.

Usage:
    python benchmarks/quality.py [--n 32] [--iterations 2000] [--n-init 1000] [--only brick grass ...]
                                 [--defects standard|novel] [--methods mse rgi rrgi] [--no-residual-rows]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch

from rgi_core.evaluation.defects import NOVEL_DEFECTS, TEXTURE_DEFECTS
from rgi_core.evaluation.labelled import (
    digits_eval_set,
    evaluate,
    evaluate_by_family,
    format_families,
    format_scores,
    texture_eval_set,
)
from rgi_core.priors import load_prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="images per evaluation set")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--n-init", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=["brick", "grass", "gravel", "digits"])
    ap.add_argument("--defects", choices=("standard", "novel"), default="standard",
                    help="texture defect kinds: the standard five or the novel five (rgi_core.evaluation.defects)")
    ap.add_argument("--methods", nargs="+", default=["mse", "rgi", "rrgi"], choices=("mse", "rgi", "rrgi", "dgp"),
                    help="methods to run (R-RGI is the slowest; the residual-only rows follow the chosen rgi/rrgi)")
    ap.add_argument("--no-residual-rows", action="store_true",
                    help="skip the texture priors' residual-map-only rows (they solve rgi/rrgi a second time)")
    args = ap.parse_args()
    print(f"# {platform.machine()} {platform.processor()}, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, n={args.n}, iterations={args.iterations}, n_init={args.n_init}, "
          f"defects={args.defects}\n")
    kinds = NOVEL_DEFECTS if args.defects == "novel" else TEXTURE_DEFECTS
    common = {"iterations": args.iterations, "n_init": args.n_init, "seed": args.seed}
    methods = tuple(args.methods)
    robust = tuple(m for m in methods if m in ("rgi", "rrgi"))
    for name in args.only:
        t0 = time.perf_counter()
        if name == "digits":
            prior = load_prior("digits-32", device="auto")
            for kind in ("salt_pepper", "block", "scribble"):
                rows = evaluate(prior, digits_eval_set(kind, n=args.n, seed=args.seed), methods=methods, **common)
                print(format_scores(f"digits-32, held-out 1500.., {kind}", rows), "\n", flush=True)
        else:
            prior = load_prior(f"{name}-64", device="auto")
            data = texture_eval_set(name, n=args.n, seed=args.seed, kinds=kinds)
            by_family = evaluate_by_family(prior, data, methods=methods, **common)
            rows = by_family.pop("")
            # what the residual map alone gives (without rgi_core.detectors.texture and rgi_core.detectors.segmenter)
            if "texture_stats" in prior.defaults and robust and not args.no_residual_rows:
                rows += [dataclasses.replace(r, method=f"{r.method}, residual map only")
                         for r in evaluate(prior, data, methods=robust, texture_map=False, learned_map=False,
                                           **common)]
            title = (f"{name}-64, held-out right quarter, {args.n // 2} clean + {args.n - args.n // 2} defective "
                     f"crops ({args.defects} defects)")
            print(format_scores(title, rows), "\n", flush=True)
            if by_family:
                print(format_families(f"{name}-64, per defect kind (its crops against every clean crop)",
                                      by_family), "\n", flush=True)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
