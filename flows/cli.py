"""The ``rgi`` command line. Subcommands import what they need lazily, so ``rgi --help`` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _warn(message: str) -> None:
    print(f"rgi: warning: {message}", file=sys.stderr)


def _stopped(head: str, left: str, code: int | None) -> int:
    """Say in one line that a command stopped on request (``rgi HEAD (SIGINT); LEFT``: what it left behind); see
    :func:`_say_stopped`."""
    from flows import stopping

    return _say_stopped(f"rgi {head} ({stopping.stop_reason() or 'stop requested'}); {left}", code)


def _say_stopped(line: str, code: int | None) -> int:
    """Print ``line`` and return the exit code of the signal that asked (1 without one, e.g. a Prefect API
    cancellation). The request is forgotten, so a process that goes on (a test, a library caller) can run the
    next command."""
    from flows import stopping

    print(line, file=sys.stderr, flush=True)
    stopping._reset()
    return code if code is not None else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.core:
        from rgi_core.evaluation.toy import format_table, run_demo

        print("rgi demo --core: a random 32x32 generator, 6 images it can make exactly, two gross corruptions.")
        print("Restored PSNR and mask IoU are medians over the images; higher is better.\n", flush=True)
        print(format_table(run_demo(iterations=args.iterations or 600)))
        return 0
    from flows import stopping
    from flows.clean import RunStopped
    from flows.demo import run

    stopping.own_temporary_server()
    with stopping.cli_signals() as signalled:
        try:
            return run(out_dir=args.out_dir, texture=args.texture, n=args.images, iterations=args.iterations or 600,
                       compare=args.compare)
        except RunStopped as exc:
            return _say_stopped(f"\nrgi demo: {exc}", signalled())


def _cmd_priors(args: argparse.Namespace) -> int:
    from rgi_core.priors import read_metadata, shipped_priors

    priors = shipped_priors()
    if not priors:
        print("no priors shipped with this installation; load your own with --prior PATH_OR_URL")
        return 0
    print(f"{'name':<12} {'size':>7} {'ch':>3} {'latent':>8} {'steps':>6} {'lam':>7} {'maps':<24}  training data")
    for name, path in sorted(priors.items()):
        meta = read_metadata(path.read_bytes())
        a, t = meta["architecture"], meta.get("training", {})
        data = t.get("data", {})
        note = data.get("description", data.get("source", "")) if isinstance(data, dict) else str(data)
        defaults = meta.get("defaults", {})
        lam = defaults.get("lam")
        maps = "+".join(["residual"] + [m for m, key in (("texture", "texture_stats"), ("learned", "segmenter"))
                                        if defaults.get(key)])
        print(f"{name:<12} {a['resolution']:>3}x{a['resolution']:<3} {a['channels']:>3} {a['latent_mode']:>8} "
              f"{t.get('steps', ''):>6} {'' if lam is None else f'{lam:.4f}':>7} {maps:<24}  {note}")
    return 0


def _cmd_train_prior(args: argparse.Namespace) -> int:
    import torch

    from flows import stopping
    from rgi_core.io.images import read_clean_images
    from rgi_core.priors.nets import ArchSpec
    from rgi_core.priors.training import TrainConfig, TrainingStopped, train_prior
    from rgi_core.stopping import Cancelled

    if args.threads:
        torch.set_num_threads(args.threads)
    records, errors = read_clean_images(args.images, args.channels, _warn)
    arch = ArchSpec(resolution=args.resolution, channels=args.channels, latent_dim=args.latent_dim,
                    latent_mode=args.latent_mode, width=args.width, max_channels=args.max_channels)
    cfg = TrainConfig(arch=arch, steps=args.steps, batch_size=args.batch_size, crop=args.crop, flip=args.flip,
                      seed=args.seed, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                      device=args.device)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + ".train")
    data = {"source": args.images, "images": len(records), "skipped": len(errors)}
    if args.data_note:
        data["description"] = args.data_note
    print(f"training {arch} on {len(records)} images for {args.steps} steps; state and samples in {work}",
          file=sys.stderr, flush=True)

    from contextlib import nullcontext

    from flows.progress import bar

    # A bar on a terminal; the loss lines (every --log-every steps) in logs and pipes.
    with (bar("training", unit="steps", errors=False) if sys.stderr.isatty() else nullcontext() as show,
          stopping.cli_signals() as signalled):

        def progress(step: int, total: int, losses: dict[str, float]) -> None:
            if show is not None:
                show(step, 0, total)
                return
            print(f"step {step}/{total}  d_real {losses['d_real']:.3f}  d_fake {losses['d_fake']:.3f}  "
                  f"g {losses['g']:.3f}  {losses['seconds']:.0f}s", file=sys.stderr, flush=True)

        try:
            exclude = None
            if args.robust:
                from rgi_core.robust_training import RobustConfig, train_prior_robust

                path, exclude = train_prior_robust(
                    [r.pixels for r in records], cfg, work, out=out,
                    robust=RobustConfig(warmup=args.robust_warmup, drop=args.robust_drop, k=args.robust_k),
                    name=args.name or out.stem,
                    data_description=data, progress=progress, log_every=args.log_every,
                    stop=stopping.stop_requested, note=lambda line: print(line, file=sys.stderr, flush=True))
            else:
                path = train_prior([r.pixels for r in records], cfg, work, out=out, name=args.name or out.stem,
                                   data_description=data, progress=progress, log_every=args.log_every,
                                   stop=stopping.stop_requested)
            if args.encoder_steps > 0:  # the prior's encoder, on crops of the same images
                from rgi_core.priors import load_prior, update_metadata
                from rgi_core.priors.training import ImageSampler

                prior = load_prior(path, device=args.device)
                crops = ImageSampler([r.pixels for r in records], arch.resolution, args.crop, args.flip,
                                     args.seed, exclude).sample(args.encoder_crops)
                try:
                    encoder = _train_encoder(prior, crops, args, stopping.stop_requested,
                                             _encoder_checkpoint(str(path)))
                except Cancelled:
                    return _stopped("train-prior: stopped while training the encoder",
                                    f"{path} has no encoder yet; run the same command to resume it", signalled())
                update_metadata(path, encoder=encoder, defaults=prior.meta.get("defaults", {}))
                _encoder_checkpoint(str(path)).unlink(missing_ok=True)
        except TrainingStopped as exc:
            return _stopped(f"train-prior: stopped at step {exc.step}",
                            f"checkpoint in {work}; run the same command to resume", signalled())
        except Cancelled:  # --robust, while scoring its images: the warm state is in the work dir
            return _stopped("train-prior: stopped while flagging the training images",
                            f"checkpoint in {work}; run the same command to resume", signalled())
    print(f"wrote {path}")
    return 0


def _cmd_calibrate_prior(args: argparse.Namespace) -> int:
    import json

    from flows import stopping
    from rgi_core.calibration import CalibrationConfig, calibrate
    from rgi_core.detectors.context import ContextConfig, ContextMap
    from rgi_core.detectors.segmenter import LearnedMap, SegmenterConfig
    from rgi_core.io.images import read_clean_images
    from rgi_core.priors import load_prior, update_metadata
    from rgi_core.priors.training import ImageSampler
    from rgi_core.stopping import Cancelled

    if args.triage_miss is not None and (args.fusion_families <= 0 or args.fusion_images <= 0):
        raise ValueError("--triage-miss is read on the fusion's defect families: give --fusion-families N (and "
                         "--fusion-images)")
    if args.switch_triage_early and args.switch_triage_images <= 0:
        raise ValueError("--switch-triage-early reads the switch triage's clean crops: give --switch-triage-images N")
    if args.early_read and (args.fusion_images <= 0 or args.early_read_images <= 0):
        raise ValueError("--early-read reads the full fused score: give --fusion-images N and --early-read-images N")
    prior = load_prior(args.prior, device=args.device)
    for kv in args.set:
        key, _, value = kv.partition("=")
        if not value:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        prior.meta.setdefault("defaults", {})[key] = json.loads(value)
    records, _ = read_clean_images(args.images, prior.spec.channels, _warn)
    sampler = ImageSampler([r.pixels for r in records], prior.spec.resolution, "auto", False, args.seed)
    clean = sampler.sample(args.images_n)  # (N, C, R, R)
    cfg = CalibrationConfig(quantile=args.quantile, iterations=args.iterations, rounds=args.rounds, seed=args.seed,
                            trim=args.trim, search_iterations=args.search_iterations, search_n_init=args.search_n_init)
    # the fusion's clean tails come from images the texture statistics and the segmenter never saw
    fit_on, held = sampler.split(args.holdout, args.seed) if args.fusion_images > 0 and args.holdout > 0 else (
        sampler, sampler)
    texture = fit_on.sample(args.texture_stats) if args.texture_stats > 0 else None  # (M, C, R, R)
    segmenter = encoder = None
    phi_nets: dict = {}
    with stopping.cli_signals() as signalled:
        try:
            if args.segmenter_steps > 0:  # trained on its own crops, thresholded on others it never saw
                train, held_out = fit_on.sample(args.segmenter_crops), fit_on.sample(256)
                segmenter = LearnedMap.fit(
                    train, held_out,
                    SegmenterConfig(steps=args.segmenter_steps, seed=args.seed, members=args.segmenter_members),
                    log=lambda s, v: print(f"segmenter step {s}: focal loss {v:.4f}", file=sys.stderr),
                    device=prior.device, stop=stopping.stop_requested)
            if args.encoder_steps > 0:  # before the calibration, so its solves start as cleaning's will
                encoder = _train_encoder(prior, fit_on.sample(args.encoder_crops), args, stopping.stop_requested,
                                         _encoder_checkpoint(args.prior))
            phi_nets = _train_phi_nets(prior, fit_on, args, stopping.stop_requested)
            context = None
            if args.context_steps > 0:  # trained on its own crops, thresholded on others it never saw
                context = ContextMap.fit(
                    fit_on.sample(1024), fit_on.sample(256), ContextConfig(steps=args.context_steps, seed=args.seed),
                    log=lambda s, v: print(f"context model step {s}: NLL {v:.4f}", file=sys.stderr),
                    device=prior.device, stop=stopping.stop_requested)
            fusion_clean = held.sample(args.fusion_images) if args.fusion_images > 0 else None
            families = (_family_crops(held, args.fusion_families, args.seed, prior.spec.channels)
                        if fusion_clean is not None else None)
            triage_clean = (held.sample(args.triage_images)
                            if fusion_clean is not None and args.triage_keep and args.triage_images > 0 else None)
            switch_clean = sampler.sample(args.switch_triage_images) if args.switch_triage_images > 0 else None
            early_clean = held.sample(args.early_read_images) if args.early_read else None
            defaults = calibrate(prior, clean, cfg, texture_clean=texture, segmenter=segmenter, context=context,
                                 stop=stopping.stop_requested, fusion_clean=fusion_clean, fusion_families=families,
                                 triage_keep=args.triage_keep or None, triage_miss=args.triage_miss,
                                 triage_clean=triage_clean,
                                 switch_clean=switch_clean, switch_early=args.switch_triage_early,
                                 switch_early_keep=args.switch_triage_early_keep, early_clean=early_clean,
                                 early_step=args.early_read, early_keep=args.early_read_keep)
        except Cancelled:
            kept = ("; the encoder goes on from its checkpoint when the same command runs again"
                    if _encoder_checkpoint(args.prior).exists() else "")
            return _stopped("calibrate-prior: stopped", "the prior is unchanged" + kept, signalled())
        defaults["calibration"]["source"] = args.images
        meta = update_metadata(args.prior, segmenter=segmenter, encoder=encoder, phi_nets=phi_nets, context=context,
                               defaults=defaults)
        if encoder is not None:
            _encoder_checkpoint(args.prior).unlink(missing_ok=True)
    print(json.dumps(meta["defaults"], indent=2))
    return 0


def _train_phi_nets(prior: Any, sampler: Any, args: argparse.Namespace, stop: Any) -> dict:
    """``--phi-nets``: one phi-net per degradation, put in ``prior`` (its nets and ``defaults.phi_nets``) as the
    file will hold them."""
    from rgi_core.calibration import phi_net_pairs
    from rgi_core.priors.phinet import PhiNetConfig, train_phi_net

    nets = {}
    for op in args.phi_nets:
        cfg = PhiNetConfig(images=args.phi_images, method=args.phi_method, steps=args.phi_steps, seed=args.seed)
        print(f"phi-net {op}: inverting {cfg.images} degraded crops", file=sys.stderr)
        pairs = phi_net_pairs(prior, sampler.sample(cfg.images), op, cfg, stop)
        def log(step: int, loss: float, op: str = op) -> None:
            print(f"phi-net {op} step {step}: loss {loss:.5f}", file=sys.stderr)

        net, record = train_phi_net(pairs, cfg, stop=stop, log=log)
        nets[op] = net
        prior.phi_nets[op] = net.to(prior.device)
        prior.meta.setdefault("defaults", {}).setdefault("phi_nets", {})[op] = record
    return nets


def _encoder_checkpoint(prior_path: str) -> Path:
    """Where ``--encoder-steps`` keeps its training state until the encoder is in the prior file."""
    return Path(f"{prior_path}.encoder-checkpoint")


def _train_encoder(prior: Any, clean: Any, args: argparse.Namespace, stop: Any, checkpoint: Path) -> Any:
    """Train the prior's encoder (resumable from ``checkpoint``) and put it in ``prior``: its nets and
    ``defaults.encoder``, as the file will hold them."""
    from rgi_core.priors.encoder import EncoderConfig, train_encoder

    encoder, record = train_encoder(
        prior.generator, clean, EncoderConfig(steps=args.encoder_steps, seed=args.seed),
        checkpoint=checkpoint, stop=stop, device=prior.device,
        log=lambda s, v: print(f"encoder step {s}: loss {v:.4f}", file=sys.stderr))
    prior.encoder = encoder.to(prior.device)
    prior.meta.setdefault("defaults", {})["encoder"] = record
    return encoder


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return v


def _family_crops(sampler: Any, n: int, seed: int, channels: int) -> dict[str, tuple[Any, Any]]:
    """``n`` clean crops per validation defect family, each with one defect of it: name -> (images, truth)."""
    from rgi_core.evaluation.families import apply_family_batch, families_for

    return {family: apply_family_batch(sampler.sample(n), family, seed=seed * 100_003 + k * 1009)
            for k, family in enumerate(families_for(channels) if n > 0 else ())}


def _cmd_clean(args: argparse.Namespace) -> int:
    from flows import progress, stopping
    from flows.clean import RunStopped, run_clean
    from flows.options import options_from_args

    opts = options_from_args(args, fit=args.fit, task_runner="threads" if args.dask is None else "dask",
                             dask_address=args.dask or None)
    _check_clean_inputs(args.source, args.catalog, args.prior, opts)  # before the Prefect server starts
    stopping.own_temporary_server()
    with stopping.cli_signals() as signalled, progress.bar("cleaning") as show, progress.listening(show):
        try:
            out = run_clean(source=args.source, catalog=args.catalog, prior=args.prior, options=opts)
        except RunStopped as exc:
            return _say_stopped(f"\nrgi clean: {exc}; run the same command again to go on", signalled())
    print(f"\nrgi clean: {out['images_ok']} cleaned, {out['images_error']} errors, {out['images_skipped']} already "
          f"in the catalog; {out['images_per_second']:.2f} images/s; config {out['config_hash']}")
    if out["top"]:
        print("\ntop anomalies:")
        print(f"{'score':>8}  source")
        for r in out["top"]:
            print(f"{r['anomaly_score']:8.3f}  {r['source_uri']}")
    if out["report_uri"]:
        print(f"\nreport: {out['report_uri']}")
    if out.get("html_report_uri"):
        print(f"HTML report (open it in a browser): {out['html_report_uri']}")
    return 1 if out["images_ok"] == 0 and out["images_error"] > 0 else 0


def _check_clean_inputs(source: str, catalog: str, prior: str, opts: Any) -> None:
    """The cheap checks of ``rgi clean``, so a typo fails in a second instead of after the Prefect server's
    start-up: the source exists, the catalog is a folder or can become one, the prior loads, the calibration
    file (if any) fits the prior. Raises the same errors the flow would."""
    import fsspec

    from rgi_core.io.fs import require_no_credentials
    from rgi_core.priors import load_prior

    for what, uri in (("source", source), ("catalog", catalog), ("prior", prior)):
        require_no_credentials(uri, what)
    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such source: {source}")
    fs, path = fsspec.core.url_to_fs(catalog)
    if fs.isfile(path):
        raise ValueError(f"catalog {catalog} is a file; give a folder or prefix")
    bucket = path.split("/", 1)[0]
    if "file" not in fs.protocol and not fs.exists(bucket):
        raise FileNotFoundError(f"no such bucket for the catalog: {catalog}")
    p = load_prior(prior, device="cpu")
    opts.calibration_document(p)


def _cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from rgi_core.catalog.sql import query

    try:
        df = query(args.catalog, args.sql)
    except duckdb.Error as exc:
        raise ValueError(f"query failed: {exc}") from exc
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    elif args.format == "json":
        print(df.to_json(orient="records", date_format="iso"))
    else:
        print(df.to_string(index=False) if len(df) else "(no rows)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import fsspec

    from rgi_core.report import build_report

    fs, path = fsspec.core.url_to_fs(args.catalog)
    if not fs.exists(path):
        raise FileNotFoundError(f"no such catalog: {args.catalog}")
    report = build_report(args.catalog, args.out, runs=args.run, limit=args.limit)
    rows = f"{report.rows} of {report.total_rows}" if report.rows < report.total_rows else f"{report.rows}"
    unreadable = f"; {report.missing} unreadable, shown as placeholders" if report.missing else ""
    print(f"rgi report: {rows} image rows, {report.images} image files{unreadable}")
    where = Path(report.index_uri).resolve().as_uri() if "://" not in report.index_uri else report.index_uri
    print(f"report: {where}")
    return 0


def _cmd_export_dataset(args: argparse.Namespace) -> int:
    from rgi_core.io import builtin

    paths = builtin.export(args.name, args.split, args.out_dir)
    print(f"wrote {len(paths)} images to {args.out_dir}")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from flows.watch import watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # finish the message in hand, then stop
        signal.signal(sig, lambda *_: stop.set())
    stats = watch(args.queue_url, prefix=args.prefix, state=args.state, once=args.once,
                  max_messages=args.max_messages, wait_seconds=args.wait_seconds, stop=stop)
    print(f"rgi watch: {stats.messages} messages, {stats.events} events, {stats.duplicates} duplicates, "
          f"{stats.skipped} not shards, {stats.errors} left on the queue", file=sys.stderr)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    import fsspec

    from rgi_core.evaluation.grids import show_image

    png, row, notes = show_image(args.catalog, args.image_key, args.config_hash)
    for note in notes:
        _warn(note)
    out = args.out or f"{row['image_key'][:16]}.png"
    with fsspec.open(out, "wb") as f:
        f.write(png)
    print(f"{row['image_key']}  score {row['anomaly_score']:.4f}  anomalous {row['is_anomalous']}  "
          f"source {row['source_uri']}")
    tiles = "input / restored / anomaly map / mask M / phi" if row["mask_uri"] else \
        "input / restored / anomaly map / phi; no mask M: the row predates catalog schema 2"
    print(f"wrote {out} ({tiles})")
    return 0


def _manipulated(args: argparse.Namespace, sources: list[str]) -> tuple[Any, Any]:
    """The images read from ``sources`` at the prior's size, and their reconstruction (DGP by default)."""
    import fsspec
    import torch

    from rgi_core.cleaning import network_inputs
    from rgi_core.inversion.config import config_for_prior
    from rgi_core.inversion.manipulate import reconstruct
    from rgi_core.io.images import decode_image
    from rgi_core.priors import load_prior

    prior = load_prior(args.prior, device=args.device)
    images = []
    for src in sources:
        with fsspec.open(src, "rb") as f:
            x = torch.from_numpy(decode_image(f.read(), prior.spec.channels, name=src))
        images.append(network_inputs(x, prior, "resize"))
    overrides = {k: v for k, v in (("iterations", args.iterations), ("n_init", args.n_init)) if v is not None}
    cfg = config_for_prior(args.method, prior.defaults, seed=args.seed, device=args.device, **overrides)
    x = torch.cat(images)
    return x, reconstruct(x, prior, cfg)


def _write_strip(out: str, rows: list[Any]) -> None:
    """Rows of images (each (N, C, H, W) in [0, 1]) as one PNG grid, one row per entry."""
    import fsspec
    import torch

    from rgi_core.io.images import encode_png

    width = max(len(r) for r in rows)
    padded = [torch.cat([r, r.new_ones((width - len(r), *r.shape[1:]))]) if len(r) < width else r for r in rows]
    grid = torch.cat([torch.cat(list(r), dim=-1) for r in padded], dim=-2)  # (C, rows*H, width*W)
    with fsspec.open(out, "wb") as f:
        f.write(encode_png(grid.clamp(0, 1).numpy()))


def _cmd_jitter(args: argparse.Namespace) -> int:
    from rgi_core.inversion.manipulate import jitter

    x, rec = _manipulated(args, [args.image])
    samples = [jitter(rec, 0, args.n, std, args.seed) for std in args.std]
    _write_strip(args.out, [x.cpu(), rec.result.generated.cpu(), *samples])
    print(f"wrote {args.out}: input / reconstruction ({args.method}) / {args.n} jitters at std "
          f"{', '.join(f'{s:g}' for s in args.std)} (one row each)")
    return 0


def _cmd_morph(args: argparse.Namespace) -> int:
    from rgi_core.inversion.manipulate import morph

    x, rec = _manipulated(args, [args.a, args.b])
    frames = morph(rec, 0, 1, args.steps)
    _write_strip(args.out, [x.cpu(), frames])
    print(f"wrote {args.out}: the two inputs / {args.steps} frames from A's reconstruction to B's ({args.method})")
    return 0


def _cmd_setup(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    from flows.blocks import setup

    slugs = setup(gpu_slots=args.gpu_slots)
    print(f"registered block types on {PREFECT_API_URL.value() or 'the local Prefect server'}: {', '.join(slugs)}")
    print(f"tag concurrency limit: gpu = {args.gpu_slots} slot(s)")
    return 0


def _clean_tensors(source: str, channels: int) -> list:
    """Clean images for ``rgi calibrate`` as (C, H, W) tensors (unreadable files are warned about and skipped).

    Ground-truth masks of a labelled folder (``*_mask.*``, the ``rgi evaluate`` convention) are not images
    and are left out; a black mask taken as a "clean image" would drag the thresholds down.
    """
    import torch

    from rgi_core.io.images import read_clean_images

    records, _ = read_clean_images(source, channels, _warn, skip_masks=True)
    return [torch.from_numpy(r.pixels) for r in records]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import dataclasses
    from dataclasses import asdict

    from flows import stopping
    from flows.options import SolveOptions, options_from_args
    from rgi_core.calibration import read_calibration
    from rgi_core.evaluation.labelled import (
        Thresholds,
        evaluate_labelled,
        format_detectors,
        format_families,
        format_paper,
        format_scores,
        load_labelled,
        score_paper,
        write_evaluation,
    )
    from rgi_core.priors import load_prior
    from rgi_core.settings import resolve
    from rgi_core.stopping import Cancelled

    solve = options_from_args(args, SolveOptions)  # validated as `rgi clean`'s: e.g. --full-solve with --triage
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    prior = load_prior(args.prior, device=args.device)
    items, errors = load_labelled(args.data, args.masks)
    for e in errors:
        _warn(f"skipped {e}")
    cal = read_calibration(args.threshold, prior) if args.threshold else None
    settings = resolve(prior, calibration=cal, sizing=args.sizing)  # sizing, thresholds; each method's config below
    sizing = settings.sizing
    thresholds = Thresholds(score=settings.score_threshold)
    if cal is not None:
        thresholds = Thresholds(settings.map_threshold, settings.score_threshold,
                                f"{args.threshold} ({cal.get('method', 'rgi')}, fpr {cal.get('fpr')})")
    n_masks = sum(it.mask is not None for it in items)
    n_clean = sum(it.clean is not None for it in items)
    print(f"rgi evaluate: {len(items)} images ({n_masks} with masks, {n_clean} with clean references), "
          f"prior {prior.name}, sizing {sizing}, methods {', '.join(methods)}", file=sys.stderr, flush=True)
    meta = {"data": args.data, "masks": args.masks, "prior": prior.name, "prior_id": prior.prior_id,
            "sizing": sizing, "skipped": errors}
    with stopping.cli_signals() as signalled:
        try:
            report = evaluate_labelled(prior, items, methods, sizing, thresholds, args.batch_size,
                                       progress=lambda m: print(m, file=sys.stderr, flush=True), meta=meta,
                                       calibration=cal, stop=stopping.stop_requested, **solve.solver_overrides())
        except Cancelled:
            return _stopped("evaluate: stopped", "no report written", signalled())
    print(format_scores(f"{args.data}: {len(items)} images, thresholds: {thresholds.source}", report.scores))
    if report.families:
        print("\n" + format_families("per defect family (its folder), against every clean image", report.families))
    if report.detectors:
        title = "per detector: its own image score and map (what each contributes)"
        print("\n" + format_detectors(title, report.detectors))
    if args.paper_protocol and n_masks:
        paper = [score_paper(items, r) for r in report.runs]
        print("\n" + format_paper("the RGI paper's protocol (per image: min-max normalised, best Dice; mean ± std)",
                                   paper))
        extra = {"paper_protocol": [asdict(p) for p in paper]}
    else:
        extra = {}
    if not n_masks:
        print("\n(no ground-truth masks: pixel metrics, PRO and image AUROC are n/a)")
    uris = write_evaluation(dataclasses.replace(report, meta={**report.meta, **extra}), args.out, grid_k=args.grid)
    print("\n" + "\n".join(f"wrote {u}" for u in uris.values()))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    import fsspec

    from flows import stopping
    from rgi_core.calibration import CalibrationConfig, calibrate_fpr, conformal_min_images
    from rgi_core.priors import load_prior
    from rgi_core.settings import resolve
    from rgi_core.stopping import Cancelled

    prior = load_prior(args.prior, device=args.device)
    images = _clean_tensors(args.images, prior.spec.channels)
    cfg = CalibrationConfig(quantile=args.quantile, iterations=args.iterations, n_init=args.n_init,
                            rounds=args.rounds, seed=args.seed)
    sizing = resolve(prior, args.method, sizing=args.sizing).sizing
    print(f"rgi calibrate: {len(images)} clean images, prior {prior.name}, method {args.method}, sizing {sizing}, "
          f"target FPR {args.fpr}", file=sys.stderr, flush=True)
    with stopping.cli_signals() as signalled:
        try:
            doc = calibrate_fpr(prior, images, args.fpr, cfg, method=args.method, sizing=sizing,
                                lam_images=args.lam_images, lam=args.lam, stop=stopping.stop_requested)
        except Cancelled:
            return _stopped("calibrate: stopped", f"{args.out} not written", signalled())
    doc["source"] = args.images
    if not doc["conformal"]:
        print(f"rgi calibrate: warning: {doc['images']} images are too few for a {args.fpr} FPR bound "
              f"(need {conformal_min_images(args.fpr)}); the score threshold is the highest clean score",
              file=sys.stderr)
    text = json.dumps(doc, indent=2)
    with fsspec.open(args.out, "wt") as f:
        f.write(text + "\n")
    print(text)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def _cmd_calibrate_to(args: argparse.Namespace, only: dict[str, list[argparse.Action]]) -> int:
    """``rgi calibrate``: a calibration JSON (``--out``, the default) or the prior's own defaults
    (``--into-prior``). ``only``: the flags of each output (``out``, ``into_prior``), refused with the other."""
    mode = "into_prior" if args.into_prior else "out"
    for other, actions in only.items():
        given = [a.option_strings[0] for a in actions if other != mode and getattr(args, a.dest) != a.default]
        if given:
            raise ValueError(f"{', '.join(given)}: only with {'--into-prior' if other == 'into_prior' else '--out'}")
    if args.rounds is None:
        args.rounds = 6 if args.into_prior else 4
    if args.into_prior:
        return _cmd_calibrate_prior(args)
    args.out = args.out or "calibration.json"
    return _cmd_calibrate(args)


def _cmd_calibrate_prior_deprecated(args: argparse.Namespace) -> int:
    _warn("calibrate-prior is deprecated; use rgi calibrate IMAGES --prior PRIOR --into-prior")
    return _cmd_calibrate_prior(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the cleaning pipeline end to end on a local S3 server, offline")
    d.add_argument("--iterations", type=int, default=None, help="optimisation steps (default 600)")
    d.add_argument("--texture", choices=("brick", "grass", "gravel"), default="brick")
    d.add_argument("--images", type=int, default=24, help="images in the demo dataset")
    d.add_argument("--out-dir", default="demo-output", help="where the report PNG is copied")
    d.add_argument("--compare", action="store_true",
                   help="clean the shards again on the full-solve path (no encoder start, no adaptive stopping, no "
                        "triage) and print both images/s and AUROCs (make demo does)")
    d.add_argument("--core", action="store_true", help="instead: the inversion core alone on a random generator")
    d.set_defaults(func=_cmd_demo)


def _add_priors(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser("priors", help="list the priors shipped with this installation")
    pr.set_defaults(func=_cmd_priors)


def _add_train_prior(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train-prior", help="train a prior (GAN) on clean images; resumes an interrupted run")
    t.add_argument("images", help="folder, file or fsspec URL (s3://...) of clean png/jpg/webp/tiff images")
    t.add_argument("--out", required=True, help="prior file to write (.safetensors)")
    t.add_argument("--resolution", type=int, default=64, choices=(32, 64, 128))
    t.add_argument("--channels", type=int, default=1, choices=(1, 3))
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--latent-dim", type=int, default=128)
    t.add_argument("--latent-mode", choices=("global", "spatial"), default="global",
                   help="spatial: fully convolutional G with a latent grid (textures)")
    t.add_argument("--width", type=int, default=32, help="channels of the last generator block")
    t.add_argument("--max-channels", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--crop", choices=("auto", "random", "resize"), default="auto",
                   help="random crops of large images or whole images resized (auto: crop if >= 2x resolution)")
    t.add_argument("--flip", action="store_true", help="random horizontal flips")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--sample-every", type=int, default=1000)
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--work-dir", help="training state and sample grids (default: OUT without suffix + .train)")
    t.add_argument("--name", help="prior name in metadata (default: OUT's file stem)")
    t.add_argument("--data-note", help="what the images are (stored in the prior's metadata)")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    t.add_argument("--encoder-steps", type=int, default=2000, metavar="N",
                   help="then train the prior's encoder x -> z for N steps (rgi_core.priors.encoder; the solver "
                        "starts from it too); resumable from OUT.encoder-checkpoint; 0: no encoder (default 2000)")
    t.add_argument("--encoder-crops", type=int, default=1024, metavar="N",
                   help="clean crops the encoder reconstructs (default 1024)")
    t.add_argument("--robust", action="store_true",
                   help="the images may hold defects: after --robust-warmup of the steps, flag the tiles the warm "
                        "prior cannot explain and train on the rest (rgi_core.robust_training); recalibrate after")
    t.add_argument("--robust-warmup", type=float, default=0.5, metavar="FRACTION",
                   help="with --robust, the share of the steps trained on every image before flagging (default 0.5)")
    t.add_argument("--robust-drop", type=float, default=0.1, metavar="FRACTION",
                   help="with --robust, flag this share of the tiles, those the warm prior explains worst (default "
                        "0.1; set it to the share of defective images you expect, or a little above)")
    t.add_argument("--robust-k", type=float, default=3.5, metavar="K",
                   help="with --robust, also flag a tile whose log residual score is above median + K robust "
                        "standard deviations of all tiles' (default 3.5)")
    t.set_defaults(func=_cmd_train_prior)


def _add_calibrate_prior(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate-prior", help="deprecated: rgi calibrate IMAGES --prior PRIOR --into-prior")
    c.add_argument("prior", help="local prior file (.safetensors), rewritten in place with new defaults")
    c.add_argument("images", help="clean images of the prior's domain (its training split), folder or URL")
    c.add_argument("--quantile", type=float, default=0.995, help="clean-residual quantile that sets the mask threshold")
    c.add_argument("--iterations", type=int, default=1000)
    c.add_argument("--rounds", type=int, default=6, help="RGI solves spent on lam's fixed point (damped steps)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    _add_into_prior_flags(c)
    c.set_defaults(func=_cmd_calibrate_prior_deprecated)


def _add_into_prior_flags(c: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags of a calibration stored in the prior file: the clean crops, extra defaults, the detectors."""
    c.add_argument("--images-n", type=int, default=32, help="clean crops/images to calibrate on (default 32)")
    c.add_argument("--trim", type=float, default=3.5, metavar="K",
                   help="leave out of lam, the score threshold and the fusion's tails the calibration images whose "
                        "log score is above median + K robust standard deviations (1.4826 MAD), so a few defective "
                        "images among the clean ones do not raise them (default 3.5; 0 keeps every image)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="also store this default (JSON value), e.g. map_sigma=1.0; applied before calibrating")
    c.add_argument("--texture-stats", type=int, default=0, metavar="N",
                   help="stationary textures: fit local texture statistics on N clean crops (e.g. 256); they join "
                        "the anomaly map (rgi_core.detectors.texture). 0 keeps the prior's as they are")
    c.add_argument("--segmenter-steps", type=int, default=0, metavar="N",
                   help="train a learned anomaly segmenter for N steps on synthetic anomalies in clean crops (e.g. "
                        "1000, minutes on a CPU); it joins the anomaly map (rgi_core.detectors.segmenter). "
                        "0 keeps the prior's")
    c.add_argument("--segmenter-crops", type=int, default=1024, metavar="N",
                   help="clean crops the segmenter is trained on (default 1024); 256 others set its threshold")
    c.add_argument("--fusion-images", type=int, default=64, metavar="N",
                   help="clean crops whose detector maps calibrate the fusion (each detector's clean tail "
                        "probabilities, rgi_core.detectors.fusion; default 64). 0 drops the fusion: the detectors are "
                        "then joined by the older max/mean rule")
    c.add_argument("--holdout", type=float, default=0.25, metavar="FRACTION",
                   help="with a fusion, fit the texture statistics and the segmenter on the rest of the images and "
                        "calibrate the fusion on this fraction (every k-th image, or the bottom rows of images "
                        "sampled by crop), so each detector's clean tail is measured on images it never saw "
                        "(default 0.25; 0 uses every image for both)")
    c.add_argument("--fusion-families", type=int, default=0, metavar="N",
                   help="pick the fusion's rule and map threshold on N crops per synthetic defect family "
                        "(rgi_core.evaluation.families; the shipped priors use 24). 0 keeps min-p and the default "
                        "threshold")
    c.add_argument("--search-iterations", type=int, default=0, metavar="N",
                   help="with a fusion and an encoder, also fit the residual's clean tails of a solve from the "
                        "best-of-N search alone (`rgi clean --full-solve` or --no-encoder), on the fusion's clean "
                        "images solved for N steps that way (the shipped texture priors: 2000, as --full-solve "
                        "solves). Without them such a solve is read against the encoder start's tails, and clean "
                        "images it fits worse score as anomalies. 0: not (default)")
    c.add_argument("--search-n-init", type=int, default=1000, metavar="N",
                   help="random candidates of those solves (default 1000, as --full-solve)")
    c.add_argument("--encoder-steps", type=int, default=0, metavar="N",
                   help="train an encoder x -> z for N steps (e.g. 2000) on clean crops, corrupted with synthetic "
                        "anomalies, and on the generator's samples (rgi_core.priors.encoder): the solver then starts "
                        "from it too. Resumable from PRIOR.encoder-checkpoint. 0 keeps the prior's")
    c.add_argument("--encoder-crops", type=int, default=1024, metavar="N",
                   help="clean crops the encoder reconstructs (default 1024)")
    c.add_argument("--phi-nets", type=_phi_operators, default=(), metavar="OPS",
                   help="train BIGPrior's learned fusion for these known degradations, comma-separated (noise, "
                        "inpaint, downsample, grayscale; rgi_core.priors.phinet): clean crops are degraded, "
                        "inverted, and a net learns the phi that takes the fusion back to the clean crop; empty keeps "
                        "the prior's")
    c.add_argument("--phi-method", choices=("rgi", "rrgi", "mse", "dgp"), default="dgp",
                   help="the method whose fits the phi-nets learn to fuse (default dgp; use the one you restore with)")
    c.add_argument("--phi-images", type=int, default=64, metavar="N",
                   help="clean crops degraded and inverted (200 steps each) for each phi-net's pairs (default 64)")
    c.add_argument("--phi-steps", type=int, default=1000, metavar="N", help="Adam steps per phi-net (default 1000)")
    c.add_argument("--triage-keep", type=_fraction, default=0.2, metavar="FRACTION",
                   help="with a fusion, store a triage threshold: `rgi clean` then runs the full solve only for images "
                        "whose detectors' score is above it, a share FRACTION of --triage-images clean crops (default "
                        "0.2; rgi_core.inversion.triage). 0 stores none: every image is solved")
    c.add_argument("--triage-images", type=int, default=512, metavar="N",
                   help="read the triage threshold on N clean crops of the fusion's held-out rows (default 512): the "
                        "triage's detectors need no solve, so this costs seconds, and an 80th percentile of the "
                        "fusion's few dozen crops moves by several points of share from one draw to the next. 0 reads "
                        "it on the fusion's own crops")
    c.add_argument("--switch-triage-images", type=int, default=0, metavar="N",
                   help="with a restoration stage (restore_lam, as digits-32 has), store a switch triage: `rgi clean` "
                        "then stops an image at the stage's switch, unrestored, when its score there is at most the "
                        "score of all but a share --triage-keep of N clean crops solved as `rgi clean` solves them "
                        "(rgi_core.inversion.triage.SwitchTriage; digits-32: 256). 0 stores none (default)")
    c.add_argument("--switch-triage-early", type=int, default=0, metavar="STEP",
                   help="with --switch-triage-images, also read the score after STEP steps of the same solve and stop "
                        "the images whose score there is at most that of all but a share --switch-triage-early-keep "
                        "of the same clean crops (rgi_core.inversion.triage.EarlyRead). 0: no early read (default)")
    c.add_argument("--switch-triage-early-keep", type=_fraction, default=0.5, metavar="FRACTION",
                   help="the share of clean crops the early read sends on (default 0.5)")
    c.add_argument("--early-read", type=int, default=0, metavar="STEP",
                   help="with a fusion and no restoration stage, store an early read: `rgi clean` then stops a solved "
                        "image after STEP steps, unrestored, when its score there is at most that of all but a share "
                        "--early-read-keep of --early-read-images clean crops solved as it solves them, and never "
                        "above the score threshold (rgi_core.inversion.triage). 0: none (default)")
    c.add_argument("--early-read-keep", type=_fraction, default=0.2, metavar="FRACTION",
                   help="the share of clean crops the early read sends on (default 0.2)")
    c.add_argument("--early-read-images", type=int, default=256, metavar="N",
                   help="clean crops of the fusion's held-out rows the early read is read on (default 256)")
    c.add_argument("--triage-miss", type=_fraction, default=None, metavar="FRACTION",
                   help="with --fusion-families, lower the triage threshold until at most FRACTION of the families' "
                        "crops that the full score flags would be sent away unsolved (costs solves; default: off)")
    c.add_argument("--segmenter-members", type=int, default=1, metavar="K",
                   help="train K segmenter nets (seeds SEED, SEED+1, ...) and average their probabilities; K times "
                        "the training time (default 1; the shipped texture priors use 3, which made the learned map "
                        "steadier across seeds, docs/design.md)")
    c.add_argument("--context-steps", type=int, default=0, metavar="N",
                   help="train a context model for N steps (e.g. 2000, about 2 minutes on a CPU core) on 1024 clean "
                        "crops: it predicts each pixel from its surround, and the triage reads it beside the texture "
                        "statistics and the segmenter (rgi_core.detectors.context); a solved image's score does not. "
                        "0 keeps the prior's")


def _phi_operators(text: str) -> tuple[str, ...]:
    """``--phi-nets``: a comma-separated list of known degradations."""
    from rgi_core.priors.phinet import PHI_OPERATORS

    ops = tuple(o.strip() for o in text.split(",") if o.strip())
    bad = [o for o in ops if o not in PHI_OPERATORS]
    if bad:
        raise argparse.ArgumentTypeError(f"no phi-net for {', '.join(bad)}; choose from {', '.join(PHI_OPERATORS)}")
    return ops


def _add_clean(sub: argparse._SubParsersAction) -> None:
    cl = sub.add_parser("clean", help="clean every image under SOURCE into a Parquet catalog (a Prefect flow)")
    cl.add_argument("source", help="folder, tar/Parquet shard or prefix; local path or fsspec URL (s3://...)")
    cl.add_argument("--catalog", required=True, help="catalog root (local path or fsspec URL)")
    cl.add_argument("--prior", default="brick-64", help="shipped prior name, path or URL (default brick-64)")
    from flows.options import add_arguments  # pydantic only: --help stays fast

    # One flag per CleanOptions field (--method, --batch-size, --iterations, --lambda, --sizing, ...), from
    # flows/options.py; --tile and --resize are short for --sizing tile and --sizing resize.
    add_arguments(cl)
    sizing = cl.add_mutually_exclusive_group()
    sizing.add_argument("--tile", dest="sizing", action="store_const", const="tile",
                        help="cut images into prior-size tiles (keeps the scale; texture priors default to this)")
    sizing.add_argument("--resize", dest="sizing", action="store_const", const="resize",
                        help="resize images to the prior's size (default unless the prior says tile)")
    cl.set_defaults(fit=None)  # fit: the deprecated name of sizing; unset, CleanOptions ignores it
    cl.add_argument("--dask", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="run inversion batches on Dask: a LocalCluster, or the scheduler at ADDRESS (tcp://h:8786)")
    cl.set_defaults(func=_cmd_clean)


def _add_query(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="run SQL on a catalog (views: images, runs)")
    q.add_argument("sql", help="a DuckDB SQL query over the views images (one row per image and config) and runs "
                   "(one row per cleaning run), e.g. \"SELECT source_uri, anomaly_score FROM images\"")
    q.add_argument("--catalog", required=True, help="catalog root (local path or fsspec URL)")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default), csv or json (one record per row)")
    q.set_defaults(func=_cmd_query)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _add_report(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="a static HTML report of a catalog (index.html and thumbnails), browsable "
                       "offline")
    r.add_argument("catalog", help="catalog root (local path or fsspec URL)")
    r.add_argument("--out", required=True, help="folder to write index.html and img/ to (local path or fsspec URL)")
    r.add_argument("--run", action="append", metavar="RUN_ID",
                   help="only this run's images and run row (repeat for several; default: every run)")
    r.add_argument("--limit", type=_positive, metavar="N",
                   help="at most N image rows, the highest scores first (default: all)")
    r.set_defaults(func=_cmd_report)


def _add_export_dataset(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export-dataset",
                       help="write a built-in dataset split (brick, grass, gravel, ihc, digits) as PNGs")
    e.add_argument("name", choices=("brick", "grass", "gravel", "ihc", "digits"))
    e.add_argument("out_dir")
    e.add_argument("--split", choices=("train", "eval"), default="train")
    e.set_defaults(func=_cmd_export_dataset)


def _add_watch(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("watch", help="S3 notifications from an SQS queue -> rgi.shard.uploaded Prefect events")
    w.add_argument("queue_url", help="SQS queue receiving the bucket's s3:ObjectCreated:* notifications")
    w.add_argument("--prefix", help="only keys under this prefix (shards/ or s3://bucket/shards/)")
    w.add_argument("--state", help="file remembering announced objects across restarts (default: memory only)")
    w.add_argument("--once", action="store_true", help="one long poll, then exit")
    w.add_argument("--max-messages", type=int, default=None, help="exit after this many messages")
    w.add_argument("--wait-seconds", type=int, default=20, help="SQS long-poll wait (0..20)")
    w.set_defaults(func=_cmd_watch)


def _add_show(sub: argparse._SubParsersAction) -> None:
    sh = sub.add_parser("show", help="write a PNG panel input / restored / anomaly map / mask M / phi for one "
                        "catalogued image")
    sh.add_argument("image_key", help="image_key from the catalog (or an unambiguous prefix of one)")
    sh.add_argument("--catalog", required=True)
    sh.add_argument("--out", help="PNG to write, local path or fsspec URL (default: KEY[:16].png here)")
    sh.add_argument("--config-hash", help="which cleaning config to show (default: the newest successful row)")
    sh.set_defaults(func=_cmd_show)


def _manipulation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", required=True, help="shipped prior name, path or URL")
    p.add_argument("--out", required=True, help="PNG to write, local path or fsspec URL")
    p.add_argument("--method", choices=("dgp", "rrgi", "rgi", "mse"), default="dgp",
                   help="reconstruction method; dgp and rrgi fine-tune the generator per image, the others move z "
                        "alone (default dgp)")
    p.add_argument("--iterations", type=int, help="optimisation steps (default: the method's)")
    p.add_argument("--n-init", type=int, help="best-of-N latent candidates (default: the method's)")
    p.add_argument("--seed", type=int, default=0, help="seeds the candidates and the jitter noise")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, mps")


def _add_manipulate(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("jitter", help="reconstruct an image (DGP) and render variations of it: its latent plus "
                       "Gaussian noise, through its fine-tuned generator")
    j.add_argument("image", help="image file or fsspec URL (resized to the prior's size)")
    j.add_argument("--n", type=int, default=8, help="variations per std (default 8)")
    j.add_argument("--std", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                   help="noise scales, one row each (default: DGP's 0.3 0.5 0.7)")
    _manipulation_flags(j)
    j.set_defaults(func=_cmd_jitter)
    m = sub.add_parser("morph", help="reconstruct two images (DGP) and render the frames between them, latents and "
                       "fine-tuned generator weights interpolated")
    m.add_argument("a", help="first image (file or fsspec URL)")
    m.add_argument("b", help="second image")
    m.add_argument("--steps", type=int, default=8, help="frames, both reconstructions included (default 8)")
    _manipulation_flags(m)
    m.set_defaults(func=_cmd_morph)


def _add_setup(sub: argparse._SubParsersAction) -> None:
    su = sub.add_parser("setup", help="register rgi's Prefect blocks and create the gpu concurrency limit (idempotent)")
    su.add_argument("--gpu-slots", type=int, default=1, help="gpu-tagged tasks allowed at once (default 1)")
    su.set_defaults(func=_cmd_setup)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from flows.options import SolveOptions, add_arguments

    ev = sub.add_parser("evaluate", help="compare methods on labelled images: table, metrics.json, curves, grid")
    ev.add_argument("data", help="folder/prefix of images with optional <stem>_mask.png and <stem>_clean.png")
    ev.add_argument("--prior", required=True, help="shipped prior name, path or URL")
    ev.add_argument("--methods", default="rgi,rrgi,mse,dgp", help="comma-separated (default rgi,rrgi,mse,dgp)")
    ev.add_argument("--masks", help="separate folder of masks named <stem>.png or <stem>_mask.png")
    ev.add_argument("--out", default="report", help="report folder (local or URL; default ./report)")
    ev.add_argument("--threshold", help="calibration JSON from `rgi calibrate`: its lam, map and score thresholds")
    ev.add_argument("--grid", type=int, default=4, help="worst and best cases in grid.png (each)")
    ev.add_argument("--paper-protocol", action="store_true",
                    help="also score as the RGI paper does (per image: map min-max normalised, Dice at its best "
                         "threshold, pixel AUROC; mean and std over the defective images), to compare with its tables")
    # --iterations, --n-init, --n-starts, --stop-tol, --triage, --encoder, --detectors, --full-solve, --lambda,
    # --sizing, --batch-size, --precision, --tf32, --seed, --device: as `rgi clean`'s
    add_arguments(ev, SolveOptions, fields=("iterations", "n_init", "n_starts", "stop_tol", "triage", "encoder",
                                            "detectors", "full_solve", "lam", "sizing", "batch_size", "precision",
                                            "tf32", "seed", "device"),
                  defaults={"batch_size": (32, "one process solves the batches in turn; no flow tasks to keep short")})
    _add_deprecated_fit(ev)
    ev.set_defaults(func=_cmd_evaluate)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    import functools

    from flows.options import SolveOptions, add_arguments

    ca = sub.add_parser("calibrate", help="lam and thresholds from clean images: for a target FPR in a JSON (--out), "
                        "or stored in the prior file with its detectors (--into-prior)")
    ca.add_argument("images", help="clean images (folder, file or URL), cleaned as `rgi clean` would")
    ca.add_argument("--prior", required=True, help="shipped prior name, path or URL; with --into-prior a local "
                    "prior file (.safetensors), rewritten in place")
    output = ca.add_mutually_exclusive_group()
    output.add_argument("--out", default=None, help="calibration JSON to write, local or URL (the default output: "
                        "calibration.json)")
    output.add_argument("--into-prior", action="store_true",
                        help="store lam, the thresholds and the detectors in the prior file instead")
    ca.add_argument("--quantile", type=float, default=0.995, help="clean-residual quantile that sets lam")
    ca.add_argument("--rounds", type=int, default=None,
                    help="RGI solves spent on lam's fixed point, damped steps (default 4; 6 with --into-prior; 0 with "
                         "--into-prior keeps the prior's lam)")
    why = "cheaper than the method's own; the thresholds hold for the value they are measured with, so clean with it"
    add_arguments(ca, SolveOptions, fields=("iterations", "n_init", "seed", "device"),
                  defaults={"iterations": (1000, why), "n_init": (200, why)})
    out = ca.add_argument_group("written to --out (the default)")
    out.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate (default 0.01)")
    out.add_argument("--lam-images", type=int, default=64, help="network-size inputs used to fit lam (default 64)")
    add_arguments(out, SolveOptions, fields=("method", "lam", "sizing"), helps={
        "method": "The method whose scores and maps are thresholded (use the one you clean with)",
        "lam": "Keep this mask sparsity weight instead of fitting it"})
    into = ca.add_argument_group("stored in the prior (--into-prior)")
    _add_into_prior_flags(into)
    _add_deprecated_fit(ca)
    only = {"out": [a for a in out._group_actions if a.dest != "n_init"], "into_prior": into._group_actions}
    ca.set_defaults(func=functools.partial(_cmd_calibrate_to, only=only))


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stores its value under the new flag's name and says so on stderr."""

    def __init__(self, *args: object, new: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        _warn(f"{option_string} is deprecated; use {self.new}")
        setattr(namespace, self.dest, values)


def _add_deprecated_fit(parser: argparse.ArgumentParser) -> None:
    """``--fit``: the deprecated, hidden spelling of ``--sizing``."""
    parser.add_argument("--fit", dest="sizing", choices=("auto", "resize", "tile"), action=_DeprecatedFlag,
                        new="--sizing", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgi", description="Clean image datasets with robust GAN inversion.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_priors(sub)
    _add_train_prior(sub)
    _add_calibrate_prior(sub)
    _add_clean(sub)
    _add_query(sub)
    _add_report(sub)
    _add_export_dataset(sub)
    _add_watch(sub)
    _add_show(sub)
    _add_manipulate(sub)
    _add_setup(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # The ephemeral Prefect server's telemetry write races its own startup on SQLite ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Its first start creates the SQLite database; Prefect's 20 s limit is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"rgi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
