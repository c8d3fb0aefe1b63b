"""Prefect flow ``train-prior``: the same training as ``rgi train-prior``, runnable on a GPU work pool.

Reads clean images from any fsspec URL, trains with :func:`rgi_core.priors.training.train_prior` (resuming from
``work_dir`` when a previous run was interrupted) and writes the prior to ``out`` (local path or URL).
A stop (a cancellation through the Prefect API, :func:`flows.stopping.request_stop`) ends training within a
step, with its state saved in ``work_dir``; the run ends Cancelled and a rerun resumes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import fsspec
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from flows import stopping
from flows.redact import redacting_flow
from rgi_core.io.fs import require_no_credentials
from rgi_core.io.images import read_clean_images
from rgi_core.priors.nets import ArchSpec
from rgi_core.priors.training import TrainConfig, train_prior
from rgi_core.robust_training import train_prior_robust
from rgi_core.stopping import Cancelled as RgiCancelled


@task(name="load-training-images", cache_policy=NONE)
def load_training_images(source: str, channels: int) -> list:
    """Decode every image under ``source``; undecodable files are logged and skipped."""
    logger = get_run_logger()
    records, _ = read_clean_images(source, channels, logger.warning)
    logger.info("loaded %d images from %s", len(records), source)
    return [r.pixels for r in records]


@task(name="train-gan", tags=["gpu"], cache_policy=NONE)
def train_gan(images: list, cfg: TrainConfig, work_dir: str, out: str, data: dict,
              stop: stopping.StopRef | None = None, robust: bool = False) -> str | State:
    """Train (or resume) and write the prior; ``out`` may be an fsspec URL (uploaded after training).
    Stopped (``stop``), it ends Cancelled with the state saved in ``work_dir`` and no prior written.
    ``robust``: the images may hold defects (:mod:`rgi_core.robust_training`)."""
    logger = get_run_logger()

    def progress(step: int, total: int, losses: dict[str, float]) -> None:
        logger.info("step %d/%d d_real %.3f d_fake %.3f g %.3f", step, total,
                    losses["d_real"], losses["d_fake"], losses["g"])

    remote = "://" in out and not out.startswith("file://")
    local = Path(tempfile.mkdtemp()) / Path(out.split("?")[0]).name if remote else Path(out)
    common = dict(out=local, name=local.stem, data_description=data, progress=progress,
                  log_every=max(1, cfg.steps // 20), stop=stop.check() if stop is not None else None)
    try:
        if robust:
            path, _ = train_prior_robust(images, cfg, work_dir, note=logger.info, **common)  # type: ignore[arg-type]
        else:
            path = train_prior(images, cfg, work_dir, **common)  # type: ignore[arg-type]
    except RgiCancelled as exc:  # TrainingStopped, or a stop while the robust mode scores its images
        return Cancelled(message=str(exc))
    if remote:
        with fsspec.open(out, "wb") as f:
            f.write(path.read_bytes())
    return out


@redacting_flow(name="train-prior", log_prints=True)
def train_prior_flow(
    images: str,
    out: str,
    work_dir: str = "rgi-train",
    resolution: int = 64,
    channels: int = 1,
    steps: int = 20000,
    latent_dim: int = 128,
    latent_mode: str = "global",
    width: int = 32,
    max_channels: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    robust: bool = False,
) -> str | State:
    """Train a prior on the images under ``images`` and write it to ``out``; returns ``out``. ``robust``: the
    images may hold defects; flag and leave out what the half-trained prior cannot explain
    (:mod:`rgi_core.robust_training`, as ``rgi train-prior --robust``), then recalibrate."""
    for what, uri in (("images", images), ("out", out)):
        require_no_credentials(uri, what)
    arch = ArchSpec(resolution=resolution, channels=channels, latent_dim=latent_dim,
                    latent_mode=latent_mode,  # type: ignore[arg-type]
                    width=width, max_channels=max_channels)
    cfg = TrainConfig(arch=arch, steps=steps, batch_size=batch_size, seed=seed,
                      sample_every=max(1, steps // 10), checkpoint_every=max(1, min(500, steps // 4)))
    pixels = load_training_images(images, channels)
    run_id = str(flow_run.get_id() or work_dir)
    with stopping.run_stop(run_id, flow_run.get_id()) as stop:
        state = train_gan(pixels, cfg, work_dir, out, {"source": images, "images": len(pixels)}, stop.ref,
                          robust, return_state=True)
    if state.is_cancelled():
        return Cancelled(message=state.message)
    return state.result()
