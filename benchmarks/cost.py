"""Cost per image: the encoder start, adaptive stopping and triage, each alone and together, against the full solve.

One pool of held-out crops of a prior's evaluation region, drawn with seeds no default was chosen on: ``--clean``
clean crops and ``--defective`` crops with one validation-family defect each (:mod:`rgi_core.evaluation.families`,
the families in turn), shuffled together as a dataset is (``digits-32``: its held-out digits, at most 297 clean,
and the gross families, :data:`rgi_core.evaluation.families.GROSS_FAMILIES`). Every variant solves the whole pool in
batches of ``--batch`` (as ``rgi clean`` does) at the prior's defaults apart from the levers:

- ``full``: every image, ``--iterations`` steps from best-of-``--n-init`` (the full solve, ``--full-solve``);
- ``encoder``: ``full`` with the prior's encoder start (only for priors that carry an encoder);
- ``stop``: ``full`` with adaptive stopping (``stop_tol``);
- ``triage``: the triage pass on every image; the suspects' products are ``full``'s (a start does not depend on
  the batch, so a suspect's solve is the one ``full`` ran), the others keep the triage pass's;
- ``all``: the defaults, every lever the prior supports, solved for real (``digits-32``: adaptive stopping and the
  switch triage, :class:`rgi_core.inversion.triage.SwitchTriage`);
- ``short``: ``all`` with at most ``--short`` steps per image (the cap ``iterations`` lowered);
- ``single``: ``all`` with E(x) as the single start (``encoder_n_init`` 1: no random candidates beside it).

Each batch's results are stored under ``--out`` as they finish, so ``run`` resumes where it stopped and
several ``run`` processes can take different variants at once. ``report`` (run at the end of ``run``) then forms
the sets: for each defect rate, ``--size`` images of the pool (``rate`` of them defective) and prints per
variant:

- the generator's passes per image, its cost (forwards + 2 x backwards, machine-independent) and the ratio to
  ``full``: the steps are each image's own, the best-of-N candidates are counted once for a set that solves at
  least one image (the solver decodes them once per generator and keeps them:
  :func:`rgi_core.inversion.init.candidate_images`), as ``rgi clean`` would run that set in one process;
- seconds per image (each batch's measured time shared by its images in proportion to their generator cost);
- image AUROC, pixel AUROC and AU-PRO (30 % FPR) over the scores and maps as written, triaged and solved rows
  together; PSNR of the restored defective images against their clean originals; the difference of each to
  ``full`` with a 95 % paired bootstrap interval (``--boot`` resamples of the set's images);
- the defective images of the whole pool that ``full`` flags (``score > score_threshold``) and the variant
  triaged away (its miss rate);
- for a prior with no triage (``digits-32``), once ``short`` and ``stop`` are solved: a short first solve in the
  triage's place, modelled from the stored solves (:func:`_short_pass`); with a restoration stage, the images
  judged clean at its switch stopped there at other thresholds than the prior's (:func:`_switch_pass`).

Usage:
    python benchmarks/cost.py run [--prior brick-64] [--out runs/cost] [--variants full stop triage all]
                                  [--clean 380] [--defective 300] [--iterations 2000] [--n-init 1000]
                                  [--batch 16] [--device cpu] [--shard I/N] [--short 500]
                                  [--seed 91000]
    python benchmarks/cost.py report [--prior brick-64] [--out runs/cost] [--rates 0.05 0.5] [--size 400]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rgi_core import invert
from rgi_core.detectors.fusion import fusion_of
from rgi_core.evaluation.families import GROSS_FAMILIES, apply_family_batch, families_for
from rgi_core.evaluation.labelled import random_crops
from rgi_core.evaluation.metrics import image_auroc, pixel_auroc, pro_auc, psnr
from rgi_core.inversion.config import InversionConfig, config_for_prior
from rgi_core.inversion.generator import GeneratorFn
from rgi_core.inversion.init import encoder_budget
from rgi_core.inversion.operators import Identity
from rgi_core.inversion.products import detector_maps
from rgi_core.inversion.triage import switch_triage_of, triage_of
from rgi_core.io import builtin
from rgi_core.priors import Prior, load_prior

VARIANTS = ("full", "encoder", "stop", "triage", "all", "short", "single")
SOLVED = ("full", "encoder", "stop", "all", "short", "single")  # run the solver (triage reads full's solves)
SEED = 91_000  # the pool's seeds (``--seed``): used by no calibration, selection or test
BINS = 4096  # pixel-AUROC histograms for the bootstrap


class PassCounter:
    """Counts the images the solver's generator runs forward, and those it runs with gradients (each then also runs
    backward), by wrapping :meth:`GeneratorFn.__call__` for the benchmark's lifetime."""

    def __init__(self) -> None:
        self.forward = self.backward = 0
        real = GeneratorFn.__call__

        def counted(fn: GeneratorFn, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            self.forward += z.shape[0]
            self.backward += z.shape[0] if torch.is_grad_enabled() and z.requires_grad else 0
            return real(fn, z, rows)

        GeneratorFn.__call__ = counted  # type: ignore[method-assign]

    def take(self) -> tuple[int, int]:
        out = (self.forward, self.backward)
        self.forward = self.backward = 0
        return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def region_of(prior_name: str) -> torch.Tensor:
    """The held-out evaluation region (C, H, W) of a shipped texture prior."""
    texture = prior_name.split("-")[0]
    textures = (*builtin.TEXTURES, *builtin.COLOUR_TEXTURES)
    if texture not in textures:
        raise SystemExit(f"the cost benchmark needs a texture prior ({', '.join(textures)}) or digits-32, "
                         f"got {prior_name}")
    return torch.from_numpy(builtin.texture(texture, "eval"))


def _sources(prior: Prior, prior_name: str, clean: int, defective: int, seed: int = SEED
             ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The originals of the defective images, the clean images, and the defect families.

    Textures: random crops of the held-out quarter (seeds ``seed + 1`` and ``+ 2``) and the generalisation families.
    Digits: the held-out digits (1500..; 297 of them, so at most 297 clean images), the defective ones the same
    digits in a seeded order, as often as ``defective`` needs; the gross families (scattered pixels, blocks, bars)."""
    if prior_name.startswith("digits"):
        held_out = torch.from_numpy(builtin.digits("eval", prior.spec.resolution))
        if clean > len(held_out):
            raise SystemExit(f"digits have {len(held_out)} held-out images: --clean {clean} is more")
        order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed + 1))
        originals = held_out[order.repeat(defective // len(held_out) + 1)[:defective]]
        return originals, held_out[:clean], tuple(GROSS_FAMILIES)
    region = region_of(prior_name)
    size = prior.spec.resolution
    return (random_crops(region, defective, size, seed + 1), random_crops(region, clean, size, seed + 2),
            families_for(prior.spec.channels))


def make_pool(prior: Prior, prior_name: str, clean: int, defective: int, seed: int = SEED
              ) -> dict[str, torch.Tensor]:
    """The pool: images, clean originals, truth masks, labels and family index, in a seeded shuffled order."""
    size = prior.spec.resolution
    originals, good, fams = _sources(prior, prior_name, clean, defective, seed)
    bad, truth = [], []
    for i in range(defective):
        b, t = apply_family_batch(originals[i : i + 1], fams[i % len(fams)], seed=seed * 10 + i)
        bad.append(b)
        truth.append(t)
    x = torch.cat([*bad, good]) if defective else good
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 3))
    gt = torch.cat([*truth, torch.zeros((clean, 1, size, size), dtype=torch.bool)]) if defective else \
        torch.zeros((clean, 1, size, size), dtype=torch.bool)
    return {"x": x[order], "ref": torch.cat([originals, good])[order], "gt": gt[order],
            "label": torch.cat([torch.ones(defective), torch.zeros(clean)]).bool()[order],
            "family": torch.cat([torch.arange(defective) % len(fams), torch.full((clean,), -1)])[order]}


def configs(prior: Prior, iterations: int, n_init: int, device: str, short: int = 500) -> dict[str, InversionConfig]:
    base = config_for_prior("rgi", prior.defaults, iterations=iterations, n_init=n_init, device=device)
    full = base.replace(triage=False, stop_tol=0.0, encoder=False)
    out = {"full": full, "stop": full.replace(stop_tol=base.stop_tol or 0.01), "all": base,
           "short": base.replace(iterations=short)}
    if prior.encoder is not None:
        out["encoder"] = full.replace(encoder=True)
        out["single"] = base.replace(encoder_n_init=1)
    return out


def _solve_batch(prior: Prior, cfg: InversionConfig, x: torch.Tensor, device: str,
                 passes: PassCounter) -> dict[str, torch.Tensor]:
    passes.take()
    _sync(device)
    t0 = time.perf_counter()
    r = invert(x, prior, cfg)
    _sync(device)
    seconds = time.perf_counter() - t0
    fwd, bwd = passes.take()
    return {"score": r.score.float(), "amap": r.anomaly_map.half(), "restored": r.restored.half(),
            "steps": torch.tensor([d.iterations for d in r.diagnostics]),
            "triaged": torch.tensor([bool(d.triaged) for d in r.diagnostics]),
            "skipped": torch.tensor([bool(d.restoration_skipped) for d in r.diagnostics]),  # the switch triage
            "seconds": torch.tensor(seconds), "forward": torch.tensor(fwd), "backward": torch.tensor(bwd),
            "n_init": torch.tensor(encoder_budget(cfg, prior, Identity()).n_init)}  # the search's candidates


def _triage_batch(prior: Prior, cfg: InversionConfig, x: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    """The triage pass alone: its score and map for every image, and which images it sends to the solve."""
    triage, fusion = triage_of(prior.defaults), fusion_of(prior.defaults)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = x.to(device)
        amap, score = triage.scores(fusion, detector_maps(prior, cfg, Identity(), y, triage=True))
    _sync(device)
    return {"score": score.float().cpu(), "amap": amap.half().cpu(), "suspect": (score > triage.threshold).cpu(),
            "seconds": torch.tensor(time.perf_counter() - t0)}


def cmd_run(args: argparse.Namespace) -> None:
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    root = Path(args.out) / args.prior
    root.mkdir(parents=True, exist_ok=True)
    pool_file = root / "pool.pt"
    if pool_file.exists():
        pool = torch.load(pool_file)
        if len(pool["x"]) != args.clean + args.defective:
            raise SystemExit(f"{pool_file} holds {len(pool['x'])} images, not {args.clean + args.defective}: "
                             "use another --out")
    else:
        pool = make_pool(prior, args.prior, args.clean, args.defective, args.seed)
        pool["seed"] = torch.tensor(args.seed)
        torch.save(pool, pool_file)
    cfgs = configs(prior, args.iterations, args.n_init, args.device, args.short)
    passes = PassCounter()
    invert(pool["x"][:2], prior, cfgs["full"].replace(iterations=2, n_init=8))  # warm-up, untimed
    n = len(pool["x"])
    for variant in args.variants:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")
        if variant == "triage" and triage_of(prior.defaults) is None:
            print(f"{args.prior} stores no triage threshold: no triage variant", flush=True)
            continue
        if variant != "triage" and variant not in cfgs:
            print(f"{args.prior} has no {variant} variant (no encoder)", flush=True)
            continue
        folder = root / variant
        folder.mkdir(exist_ok=True)
        (folder / "settings.txt").write_text(f"iterations={args.iterations} n_init={args.n_init} batch={args.batch} "
                                             f"device={args.device} torch={torch.__version__}\n")
        part, parts = (int(v) for v in args.shard.split("/"))
        for k, i in enumerate(range(0, n, args.batch)):
            f = folder / f"b{k:04d}.pt"
            if f.exists() or k % parts != part:
                continue
            x = pool["x"][i : i + args.batch]
            out = (_triage_batch(prior, cfgs["full"], x, args.device) if variant == "triage"
                   else _solve_batch(prior, cfgs[variant], x, args.device, passes))
            tmp = f.with_suffix(".tmp")
            torch.save(out, tmp)
            tmp.replace(f)
            print(f"{args.prior} {variant}: batch {k + 1}/{(n + args.batch - 1) // args.batch} "
                  f"{float(out['seconds']):.1f} s", flush=True)
    cmd_report(args)


def _load(folder: Path) -> dict[str, torch.Tensor] | None:
    files = sorted(folder.glob("b*.pt"))
    if not files:
        return None
    parts = [torch.load(f) for f in files]
    out = {}
    for key in parts[0]:
        if parts[0][key].dim() == 0:
            out[key] = torch.stack([p[key] for p in parts])  # one per batch
        else:
            out[key] = torch.cat([p[key] for p in parts])
    return out


def _batch_of(n: int, batch: int) -> torch.Tensor:
    return torch.arange(n) // batch


def _per_image(res: dict[str, torch.Tensor], batch: int, n: int) -> dict[str, torch.Tensor]:
    """Each image's generator forwards and backwards (its steps; its share of the best-of-N search), and its
    seconds: the batch's time shared in proportion to the images' cost."""
    steps = res["steps"].double()
    solved = ~res["triaged"]
    fwd = steps + solved.double()  # each step one forward with gradients; one more for the products
    bwd = steps.clone()
    cost = fwd + 2 * bwd
    b = _batch_of(n, batch)
    seconds = torch.zeros(n, dtype=torch.float64)
    for k in range(int(b.max()) + 1):
        rows = b == k
        w = cost[rows] + 1.0  # a triaged image still pays its detectors
        seconds[rows] = float(res["seconds"][k]) * w / w.sum()
    return {"forward": fwd, "backward": bwd, "solved": solved, "seconds": seconds}


def _triage_variant(full: dict[str, torch.Tensor], tri: dict[str, torch.Tensor], pool: dict[str, torch.Tensor],
                    batch: int) -> dict[str, torch.Tensor]:
    """``full``'s products for the suspects, the triage pass's for the others; each batch's time is the triage
    pass plus its suspects' share of ``full``'s batch."""
    s = tri["suspect"]
    out = {"score": torch.where(s, full["score"], tri["score"]),
           "amap": torch.where(s[:, None, None, None], full["amap"], tri["amap"]),
           "restored": torch.where(s[:, None, None, None], full["restored"], pool["x"].half()),
           "steps": torch.where(s, full["steps"], 0), "triaged": ~s}
    per_full = full["_seconds_image"]
    b = _batch_of(len(s), batch)
    out["seconds"] = torch.stack([tri["seconds"][k] + per_full[(b == k) & s].sum()
                                  for k in range(int(b.max()) + 1)])
    return out


def _set_indices(pool: dict[str, torch.Tensor], rate: float, size: int) -> torch.Tensor:
    """The first ``round(rate * size)`` defective and the first clean images of the pool, in pool order."""
    lab = pool["label"]
    d = round(rate * size)
    dpos, cpos = lab.nonzero().flatten(), (~lab).nonzero().flatten()
    if d > len(dpos) or size - d > len(cpos):
        d = min(d, len(dpos))
        size = min(size - round(rate * size), len(cpos)) + d
    return torch.sort(torch.cat([dpos[:d], cpos[: size - d]])).values


def _hist_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC from score histograms (ties within a bin count half)."""
    cneg = np.concatenate([[0], np.cumsum(neg)[:-1]])
    return float((pos * (cneg + 0.5 * neg)).sum() / max(pos.sum() * neg.sum(), 1))


def _metrics(v: dict[str, torch.Tensor], pool: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, float]:
    lab, gt = pool["label"][idx], pool["gt"][idx]
    amap = v["amap"][idx].float()
    d = idx[lab]
    return {"image_auroc": image_auroc(v["score"][idx], lab), "pixel_auroc": pixel_auroc(amap, gt),
            "pro": pro_auc(amap, gt),
            "psnr": float(psnr(v["restored"][d].float(), pool["ref"][d]).mean()) if len(d) else float("nan")}


def _boot(full: dict[str, torch.Tensor], v: dict[str, torch.Tensor], pool: dict[str, torch.Tensor],
          idx: torch.Tensor, reps: int) -> dict[str, tuple[float, float]]:
    """95 % paired bootstrap intervals of (variant - full) for image AUROC, pixel AUROC and PSNR: the set's
    defective and clean images resampled separately, the same draws for both."""
    lab = pool["label"][idx]
    dpos, cpos = idx[lab].numpy(), idx[~lab].numpy()
    if len(dpos) < 2 or len(cpos) < 2:
        return {}
    gt = pool["gt"]

    def per_image(res: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        levels = (res["amap"].float().clamp(0, 1 - 1e-7) * BINS).long()
        hp = np.zeros((len(levels), BINS))
        hn = np.zeros((len(levels), BINS))
        for i in idx.tolist():
            lv, g = levels[i].flatten(), gt[i].flatten()
            hp[i] = torch.bincount(lv[g], minlength=BINS).numpy()
            hn[i] = torch.bincount(lv[~g], minlength=BINS).numpy()
        p = np.full(len(levels), np.nan)
        p[dpos] = psnr(res["restored"][dpos].float(), pool["ref"][dpos]).numpy()
        return hp, hn, p

    score_f, score_v = full["score"].numpy(), v["score"].numpy()
    hf, hv = per_image(full), per_image(v)
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {"image_auroc": [], "pixel_auroc": [], "psnr": []}
    for _ in range(reps):
        bd, bc = rng.choice(dpos, len(dpos)), rng.choice(cpos, len(cpos))
        labels = torch.cat([torch.ones(len(bd)), torch.zeros(len(bc))]).bool()
        both = np.concatenate([bd, bc])
        out["image_auroc"].append(image_auroc(torch.from_numpy(score_v[both]), labels)
                                  - image_auroc(torch.from_numpy(score_f[both]), labels))
        out["pixel_auroc"].append(_hist_auroc(hv[0][bd].sum(0), hv[1][both].sum(0))
                                  - _hist_auroc(hf[0][bd].sum(0), hf[1][both].sum(0)))
        out["psnr"].append(float(np.mean(hv[2][bd]) - np.mean(hf[2][bd])))
    return {k: (float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))) for k, s in out.items()}


def _init_forwards(solved: torch.Tensor, idx: torch.Tensor, n_init: int) -> float:
    """Best-of-N forwards for a set: ``n_init`` once if any of its images is solved (the decoded candidates are
    kept for the run's later batches)."""
    return float(n_init) if bool(solved[idx].any()) else 0.0


def _cell(value: float, full: float, ci: tuple[float, float] | None, digits: int) -> str:
    """A metric, and for a variant with an interval its difference to ``full`` and the difference's 95 % CI."""
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({value - full:+.{digits}f}, [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}])"


def cmd_report(args: argparse.Namespace) -> None:
    root = Path(args.out) / args.prior
    prior = load_prior(args.prior)
    pool = torch.load(root / "pool.pt")
    n = len(pool["x"])
    res = {v: r for v in VARIANTS if (r := _load(root / v)) is not None and len(r["score"]) == n}
    if "full" not in res:
        print(f"{root}: full is not complete yet; nothing to report", flush=True)
        return
    for v in SOLVED:
        if v in res:
            res[v]["_per"] = _per_image(res[v], args.batch, n)
            res[v]["_seconds_image"] = res[v]["_per"]["seconds"]
    triage_pass = res.pop("triage", None)
    if triage_pass is not None:
        tri = _triage_variant(res["full"], triage_pass, pool, args.batch)
        tri["_per"] = _per_image(tri, args.batch, n)
        res = {k: res[k] if k != "triage" else tri for k in VARIANTS if k in res or k == "triage"}
    threshold = float(prior.defaults["score_threshold"])
    full_flags = res["full"]["score"] > threshold
    defective = pool["label"]
    flagged = full_flags & defective
    seed = int(pool.get("seed", SEED))
    print(f"\n# {args.prior}: pool of {int(defective.sum())} defective + {int((~defective).sum())} clean held-out "
          f"crops (seeds {seed}+), {args.iterations} steps, best of {args.n_init}, batches of {args.batch}; "
          f"{platform.node()}, torch {torch.__version__}, {args.device}")
    # the random candidates each variant's search decodes (results stored before it was recorded: --n-init)
    cands = {v: int(r["n_init"][0]) if "n_init" in r else args.n_init for v, r in res.items()}
    for variant, r in res.items():
        if "forward" in r:  # the cost model against the passes counted on the pool
            model = float(r["_per"]["forward"].sum()) + _init_forwards(r["_per"]["solved"], torch.arange(n),
                                                                       cands[variant])
            # counted: as the run decoded the candidates (once per process; once per batch before they were kept)
            print(f"- {variant}: generator forwards on the pool counted {int(r['forward'].sum())}, modelled "
                  f"{model:.0f}; backwards counted {int(r['backward'].sum())}, modelled "
                  f"{float(r['_per']['backward'].sum()):.0f}")
        missed = int((flagged & r["triaged"]).sum()) if "triaged" in r else 0
        print(f"- {variant}: of the {int(flagged.sum())} defective images full flags, triaged away {missed} "
              f"({missed / max(int(flagged.sum()), 1):.1%})")
        if "skipped" in r and bool(r["skipped"].any()):  # a read of the score stopped some images unrestored
            skipped, clean = r["skipped"], ~defective
            where = "the restoration stage's switch" if switch_triage_of(prior.defaults) else "the early read"
            print(f"- {variant}: stopped at {where}: {int(skipped[clean].sum())} of the "
                  f"{int(clean.sum())} clean images ({float((~skipped[clean]).double().mean()):.1%} went on), "
                  f"{int(skipped[defective].sum())} of the {int(defective.sum())} defective, "
                  f"{int(skipped[flagged].sum())} of the {int(flagged.sum())} that full flags")
            read = switch_triage_of(prior.defaults)
            early = skipped & (r["steps"] < read.switch) if read is not None else torch.zeros_like(skipped)
            if bool(early.any()):  # those stopped by an early read ran fewer steps than the switch
                print(f"- {variant}: of those, stopped by the early read (step {read.early.step}): "
                      f"{int(early[clean].sum())} clean, {int(early[defective].sum())} defective, "
                      f"{int(early[flagged].sum())} that full flags")
    for rate in args.rates:
        idx = _set_indices(pool, rate, args.size)
        nd = int(pool["label"][idx].sum())
        if nd == 0 or nd == len(idx):
            print(f"\n## {len(idx)} images at {rate:.0%} defects: one class only, no set to rank; raise --size")
            continue
        print(f"\n## {len(idx)} images, {nd} defective ({nd / len(idx):.0%})\n")
        print("| variant | G passes / image (fwd, bwd) | cost ratio | s / image | speed-up | steps / image | solved | "
              "image AUROC (Δ, 95 % CI) | pixel AUROC (Δ, 95 % CI) | AU-PRO | PSNR defective dB (Δ, 95 % CI) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        base = None
        for variant, r in res.items():
            per = r["_per"]
            fwd = float(per["forward"][idx].sum()) + _init_forwards(per["solved"], idx, cands[variant])
            bwd = float(per["backward"][idx].sum())
            cost = (fwd + 2 * bwd) / len(idx)
            sec = float(per["seconds"][idx].sum()) / len(idx)
            m = _metrics(r, pool, idx)
            if base is None:
                base = (cost, sec, m)
                ci = {}
            else:
                ci = _boot(res["full"], r, pool, idx, args.boot)

            def cell(key: str, digits: int = 3, m: dict = m, ci: dict = ci, full: dict = base[2]) -> str:
                return _cell(m[key], full[key], ci.get(key), digits)

            print(f"| {variant} | {fwd / len(idx):.0f}, {bwd / len(idx):.0f} | {base[0] / cost:.1f}x | {sec:.2f} | "
                  f"{base[1] / sec:.1f}x | {float(r['steps'][idx].double().mean()):.0f} | "
                  f"{float(per['solved'][idx].double().mean()):.2f} | {cell('image_auroc')} | {cell('pixel_auroc')} | "
                  f"{m['pro']:.3f} | {cell('psnr', 2)} |", flush=True)
    if triage_pass is not None:
        _tradeoff(res, triage_pass, pool, flagged, cands, args)
    elif "short" in res and "stop" in res:
        _short_pass(res, pool, flagged, cands, args)
    switch = config_for_prior("rgi", prior.defaults, iterations=args.iterations).restoration_switch(args.iterations)
    if triage_pass is None and "stop" in res and switch is not None:
        _switch_pass(res, pool, switch, threshold, cands, args)


def _tradeoff(res: dict[str, dict[str, torch.Tensor]], triage_pass: dict[str, torch.Tensor],
              pool: dict[str, torch.Tensor], flagged: torch.Tensor, cands: dict[str, int], args: argparse.Namespace
              ) -> None:
    """What a lower triage threshold would cost: for thresholds sending a share ``keep`` of the pool's clean crops to
    the solve, the flagged defective crops sent away and the cost ratio at each rate, modelled from the solved
    images of the cheapest solving variant: their mean passes, and the search's candidates once for the set of
    ``--size`` images."""
    solving = [v for v in ("single", "short", "all") if v in res]
    if not solving:
        return
    v = solving[0]
    per, clean = res[v]["_per"], ~pool["label"]
    solved = per["solved"]
    c_solve = float((per["forward"] + 2 * per["backward"])[solved].mean())
    full = res["full"]["_per"]
    c_full = float((full["forward"] + 2 * full["backward"]).mean()) + cands["full"] / args.size
    score = triage_pass["score"].double()
    print(f"\n## The triage threshold against its misses (modelled on `{v}`: a solved image {c_solve:.0f} passes and "
          f"{cands[v]} candidates once per set; the full solve {c_full:.0f} per image; shares over the "
          f"pool)\n")
    print("| clean crops solved (keep) | flagged defective sent away | "
          + " | ".join(f"solved at {r:.0%} | cost ratio at {r:.0%}" for r in args.rates) + " |")
    print("|---|---|" + "---|---|" * len(args.rates))
    shipped = round(float(triage_pass["suspect"][clean].double().mean()), 3)  # the prior's threshold on this pool
    keeps = sorted({0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0, shipped})
    for keep in keeps:
        t = float(torch.quantile(score[clean], 1.0 - keep)) if keep < 1.0 else float("-inf")
        sent = (score[flagged] <= t).double().mean().item()
        caught = float((score[pool["label"]] > t).double().mean())
        cells = []
        for r in args.rates:
            share = r * caught + (1 - r) * keep
            cost = share * c_solve + cands[v] / args.size
            cells.append(f"{share:.2f} | {c_full / max(cost, 1e-9):.1f}x")
        mark = " (the prior's threshold)" if keep == shipped else ""
        print(f"| {keep:.3f}{mark} | {sent:.1%} | " + " | ".join(cells) + " |")


def _short_pass(res: dict[str, dict[str, torch.Tensor]], pool: dict[str, torch.Tensor], flagged: torch.Tensor,
                cands: dict[str, int], args: argparse.Namespace) -> None:
    """For a prior with no detector that reads the image (no triage: ``digits-32``), what a triage by a short solve
    would give, modelled from the stored solves: every image gets ``short``'s solve (at most ``--short`` steps); those
    whose score is at most a threshold keep it, the others are solved again as ``stop``. The threshold sends a share
    ``keep`` of the pool's clean images on (a model: a shipped one would be fitted on training images). Per rate:
    the cost ratio to ``full``, image AUROC over the scores as they would be written, and the defective images
    ``full`` flags that the short pass sent away."""
    short, stop, full = res["short"], res["stop"], res["full"]
    clean = ~pool["label"]
    cost = {k: res[k]["_per"]["forward"] + 2 * res[k]["_per"]["backward"] for k in ("short", "stop", "full")}
    print("\n## A short first pass instead of a triage (modelled: `short`'s solve for every image, `stop`'s again for "
          "those over the threshold; shares over the pool)\n")
    print("| clean images solved again (keep) | flagged defective sent away | "
          + " | ".join(f"cost ratio at {r:.0%} | image AUROC at {r:.0%} (full)" for r in args.rates) + " |")
    print("|---|---|" + "---|---|" * len(args.rates))
    sets = []  # per rate: the set's images, full's cost and image AUROC on it
    for rate in args.rates:
        idx = _set_indices(pool, rate, args.size)
        lab = pool["label"][idx]
        sets.append((idx, lab, float(cost["full"][idx].sum()) + cands["full"], image_auroc(full["score"][idx], lab)))
    for keep in (0.05, 0.1, 0.2, 0.3, 0.5):
        t = float(torch.quantile(short["score"][clean].double(), 1.0 - keep))
        on = short["score"].double() > t
        score = torch.where(on, stop["score"], short["score"])
        cells = []
        for idx, lab, c_full, auroc_full in sets:
            c = float((cost["short"][idx] + torch.where(on[idx], cost["stop"][idx], 0.0)).sum())
            c += cands["short"]  # the search's candidates, decoded once for the set (and kept for the second solve)
            cells.append(f"{c_full / c:.1f}x | {image_auroc(score[idx], lab):.3f} ({auroc_full:.3f})")
        sent = int((flagged & ~on).sum())
        print(f"| {float(on[clean].double().mean()):.3f} | {sent} of {int(flagged.sum())} | " + " | ".join(cells)
              + " |")


def _switch_pass(res: dict[str, dict[str, torch.Tensor]], pool: dict[str, torch.Tensor], switch: int,
                 threshold: float, cands: dict[str, int], args: argparse.Namespace) -> None:
    """For a prior with a restoration stage (``digits-32``), what stopping at the stage's switch the images judged
    clean there would give, modelled from ``stop``'s solves: the score is read at the switch, so an image whose score is
    at most a threshold has its final score by then, and only its restoration would be skipped. Such an image costs
    ``switch`` steps; the others keep ``stop``'s. Per threshold (a share ``keep`` of the pool's clean images going on,
    and the prior's score threshold): the cost ratio to ``full`` per rate (image AUROC is ``stop``'s, unchanged) and
    the defective images that would miss the restoration stage."""
    stop, clean = res["stop"], ~pool["label"]
    full_cost = res["full"]["_per"]["forward"] + 2 * res["full"]["_per"]["backward"]
    stop_cost = stop["_per"]["forward"] + 2 * stop["_per"]["backward"]
    at_switch = torch.full_like(stop_cost, 3.0 * switch + 1)  # switch steps of a forward and a backward, the products
    score = stop["score"].double()
    print(f"\n## Stopping at the restoration stage's switch (step {switch}) the images judged clean there (modelled "
          "on `stop`: their score is final at the switch, their restoration is skipped; shares over the pool)\n")
    print("| threshold | clean images going on | defective images stopped at the switch | "
          + " | ".join(f"cost ratio at {r:.0%}" for r in args.rates) + " |")
    print("|---|---|---|" + "---|" * len(args.rates))
    rows = [(f"keep {k}", float(torch.quantile(score[clean], 1.0 - k))) for k in (0.05, 0.1, 0.2)]
    for name, t in [*rows, (f"the prior's score threshold {threshold:.3f}", threshold)]:
        on = score > t
        cells = []
        for rate in args.rates:
            idx = _set_indices(pool, rate, args.size)
            c = float(torch.where(on[idx], stop_cost[idx], at_switch[idx]).sum()) + cands["stop"]
            cells.append(f"{(float(full_cost[idx].sum()) + cands['full']) / c:.1f}x")
        print(f"| {name} | {float(on[clean].double().mean()):.3f} | {int((~on & pool['label']).sum())} of "
              f"{int(pool['label'].sum())} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--prior", default="brick-64")
        p.add_argument("--out", default="runs/cost")
        p.add_argument("--iterations", type=int, default=2000)
        p.add_argument("--n-init", type=int, default=1000)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--device", default="cpu", help="cpu (--threads threads) or cuda")
        p.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.5])
        p.add_argument("--size", type=int, default=400, help="images per set")
        p.add_argument("--boot", type=int, default=500, help="bootstrap resamples")
        if name == "run":
            p.add_argument("--variants", nargs="+", default=["full", "encoder", "stop", "triage", "all"])
            p.add_argument("--clean", type=int, default=380)
            p.add_argument("--short", type=int, default=500, help="the step cap of the short variant")
            p.add_argument("--defective", type=int, default=300)
            p.add_argument("--seed", type=int, default=SEED, help="the pool's seeds (a new pool: a new --out)")
            p.add_argument("--threads", type=int, default=1)
            p.add_argument("--shard", default="0/1", metavar="I/N",
                           help="take every N-th batch from the I-th: N processes share a variant")
    args = ap.parse_args()
    cmd_run(args) if args.cmd == "run" else cmd_report(args)


if __name__ == "__main__":
    main()
