r"""Training a prior on images that are not all clean: ``rgi train-prior --robust``.

The images a cleaning user can train a prior on are the dataset to be cleaned, defects included, and a GAN learns
to draw what it is shown. The robust mode cleans its own training set once, part way through training:

1. **Warm-up.** ``warmup`` of the steps (default half) on every image, exactly as plain training.
2. **Flag.** Every training image is cut into tiles of the prior's resolution (a non-overlapping grid whose last
   row and column sit on the far edges; an image used whole is one tile), and each tile is inverted with the warm
   generator by the plain MSE fit: the best of ``n_init`` random latents, then ``iterations`` Adam steps. (No
   ``lam`` is needed: the prior is not calibrated yet.) A tile's score is the mean of the top 1 % of its residual
   map, blurred with sigma 1 (:func:`rgi_core.detectors.residual.image_score`). The ``drop`` share of the tiles
   with the highest scores is flagged (default a tenth: the "small-loss" rule of learning from noisy labels,
   Han et al., "Co-teaching", NeurIPS 2018, which sets the share to the expected contamination), and so is any
   further tile whose score is an outlier among all tiles' scores: above the median plus ``k`` robust standard
   deviations of the log scores (:func:`rgi_core.calibration.inliers`; ``k`` = 3.5 as in Iglewicz and Hoaglin's
   modified z-score rule). The outlier rule alone was not enough: on 2048 brick training crops, 205 of them
   defective, the half-trained prior's clean crops scored in two groups (median 0.016, upper quartile 0.058),
   the log scores' spread put the cut at 0.50, above every crop, and nothing was flagged; the top tenth held 115
   of the 205 defective crops (benchmarks/dirty_data.py).
3. **Go on.** Training continues from the warm state up to ``steps``, on what is left: an image used whole is
   dropped when flagged, and a cropped image (a large texture) keeps only the crops clear of its flagged tiles.

Recalibrate afterwards as always (``rgi calibrate IMAGES --prior P --into-prior``). Its ``lam`` and score
threshold leave out outlier images by the same rule, so the dirty images do not set the thresholds either.

The cost is the steps of plain training plus one short MSE solve per tile: the 2048 64 x 64 tiles of the dirty-data
experiment took 16.5 minutes on one CPU thread while four other jobs shared the development machine's two cores
(benchmarks/dirty_data.py).
Resumable: both stages are one training run (one work dir, one state file). The scores and flags go to
``<work_dir>/robust.json`` and the warm state to ``<work_dir>/warm-state.safetensors``; a rerun reads them back and
resumes the second stage, and a rerun with another ``drop`` or ``k`` flags the same scores anew and trains the
second stage again from the warm state.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgi_core.calibration import inliers
from rgi_core.detectors.residual import image_score
from rgi_core.inversion import losses
from rgi_core.inversion.config import config_for_prior
from rgi_core.inversion.loop import SolveControl
from rgi_core.inversion.solver import invert
from rgi_core.priors.files import Prior, load_prior
from rgi_core.priors.training import STATE_FILE, ImageSampler, TrainConfig, train_prior
from rgi_core.stopping import StopCheck, check

FLAGS_FILE = "robust.json"
WARM_STATE = "warm-state.safetensors"  # the training state when the images were flagged


@dataclass(frozen=True)
class RobustConfig:
    """How the robust mode flags its training images (module docstring).

    Attributes:
        warmup: share of the training steps run on every image before flagging (0 < warmup < 1).
        drop: share of the tiles, those with the highest scores, that is flagged (0: the outlier rule alone).
        k: a tile is also flagged when its log score is above median + k * 1.4826 MAD of all tiles' log scores.
        iterations / n_init: the MSE fit that scores each tile.
        batch: tiles inverted together.
    """

    warmup: float = 0.5
    drop: float = 0.1
    k: float = 3.5
    iterations: int = 100
    n_init: int = 200
    batch: int = 256

    def __post_init__(self) -> None:
        if not 0.0 < self.warmup < 1.0:
            raise ValueError(f"warmup must be in (0, 1), got {self.warmup}")
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"drop must be in [0, 1), got {self.drop}")
        if self.k <= 0 or self.iterations < 0 or self.n_init < 1 or self.batch < 1:
            raise ValueError("k must be > 0, iterations >= 0, n_init >= 1 and batch >= 1")


def tile_starts(length: int, r: int) -> list[int]:
    """Starts of a non-overlapping grid of ``r``-long tiles over ``length``, the last one ending on the edge."""
    starts = list(range(0, length - r + 1, r))
    if starts[-1] + r < length:
        starts.append(length - r)
    return starts


def training_tiles(images: list[np.ndarray], cfg: TrainConfig) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Every image as the training sees it, in tiles (n, C, R, R): an image used whole resized to R x R, a cropped
    one cut by :func:`tile_starts`. Returns the tiles and, per tile, (image index, top, left); whole images have
    (index, -1, -1)."""
    r = cfg.arch.resolution
    tiles, where = [], []
    for k, arr in enumerate(images):
        whole = ImageSampler([arr], r, cfg.crop, False, 0)
        if whole.fixed is not None:  # the sampler resizes it the way training does
            tiles.append(whole.fixed[0])
            where.append((k, -1, -1))
            continue
        t = whole.crops[0]
        for y in tile_starts(t.shape[1], r):
            for x in tile_starts(t.shape[2], r):
                tiles.append(t[:, y : y + r, x : x + r])
                where.append((k, y, x))
    return torch.stack(tiles), where


def score_tiles(prior: Prior, tiles: torch.Tensor, rc: RobustConfig, stop: StopCheck | None = None) -> torch.Tensor:
    """Each tile's residual score (n,) after the MSE fit of :class:`RobustConfig` with ``prior``'s generator."""
    cfg = config_for_prior("mse", {}, iterations=rc.iterations, n_init=rc.n_init, seed=0, triage=False,
                           stop_tol=0.0, texture_map=False, learned_map=False)
    out = []
    for i in range(0, len(tiles), rc.batch):
        check(stop, "robust training stopped while scoring its images")
        x = tiles[i : i + rc.batch]
        result = invert(x, prior, cfg, control=SolveControl(cancelled=stop))
        residual = losses.pixel_residual(x.to(result.generated), result.generated)  # (B, 1, R, R)
        out.append(image_score(residual.cpu(), topk=0.01, sigma=1.0))
    return torch.cat(out)


def flags_from_scores(scores: torch.Tensor, where: list[tuple[int, int, int]], images: list[np.ndarray],
                      r: int, k: float, drop: float = 0.0) -> tuple[list[np.ndarray | None], dict[str, Any]]:
    """The exclusion maps that :class:`rgi_core.priors.training.ImageSampler` takes (one per image, None when
    nothing in it is flagged) and a record of the flagging (threshold, counts): the ``drop`` share of the tiles
    with the highest scores and every outlier (:func:`rgi_core.calibration.inliers` with ``k``)."""
    _, threshold = inliers(scores, k)
    if drop > 0:
        threshold = min(threshold, float(torch.quantile(scores.double(), 1.0 - drop)))
    keep = scores.double() <= threshold
    exclude: list[np.ndarray | None] = [None] * len(images)
    for (img, y, x), ok in zip(where, keep.tolist(), strict=True):
        if ok:
            continue
        if exclude[img] is None:
            exclude[img] = np.zeros(images[img].shape[1:], dtype=bool)
        if y < 0:
            exclude[img][:] = True  # type: ignore[index]
        else:
            exclude[img][y : y + r, x : x + r] = True  # type: ignore[index]
    record = {
        "tiles": len(where), "flagged_tiles": int((~keep).sum()),
        "images_touched": sum(e is not None for e in exclude), "threshold": threshold,
        "score_median": float(scores.median()), "k": k, "drop": drop,
    }
    return exclude, record


def _save_flags(path: Path, scores: torch.Tensor, where: list[tuple[int, int, int]], n_images: int,
                record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"n_images": n_images, "scores": scores.tolist(), "where": where, "record": record}))
    tmp.replace(path)


def load_flags(work_dir: str | Path, images: list[np.ndarray], cfg: TrainConfig,
               rc: RobustConfig) -> tuple[list[np.ndarray | None], dict[str, Any]] | None:
    """The exclusion maps of a robust run whose images were scored (``<work_dir>/robust.json``), flagged with
    ``rc``'s rule, or None. When the rule differs from the one the scores were first flagged with, the second stage
    starts again from the warm state (module docstring)."""
    work = Path(work_dir)
    path = work / FLAGS_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["n_images"] != len(images):
        raise ValueError(f"{path} flags {saved['n_images']} images, but {len(images)} were given: use the same "
                         "images or another work dir")
    where = [tuple(w) for w in saved["where"]]
    scores = torch.tensor(saved["scores"])
    exclude, record = flags_from_scores(scores, where, images, cfg.arch.resolution, rc.k,  # type: ignore[arg-type]
                                        rc.drop)
    first = saved["record"]
    if (first.get("k"), first.get("drop", 0.0)) != (rc.k, rc.drop):
        if not (work / WARM_STATE).exists():
            raise ValueError(f"{path} was flagged with k={first.get('k')}, drop={first.get('drop', 0.0)} and {work} "
                             "keeps no warm state to train again from: use those values or another work dir")
        shutil.copyfile(work / WARM_STATE, work / STATE_FILE)  # the second stage again, on the new flags
        saved["record"] = {**first, **record}
        _save_flags(path, scores, where, len(images), saved["record"])  # type: ignore[arg-type]
    return exclude, {**first, **record}


def train_prior_robust(images: list[np.ndarray], cfg: TrainConfig, work_dir: str | Path, *,
                       out: str | Path | None = None, robust: RobustConfig | None = None,
                       name: str | None = None, data_description: dict[str, Any] | None = None,
                       progress: Callable[[int, int, dict[str, float]], None] | None = None,
                       log_every: int = 50, stop: StopCheck | None = None,
                       note: Callable[[str], None] | None = None) -> tuple[Path, list[np.ndarray | None]]:
    """Train (or resume) a prior with the robust mode of the module docstring; returns the prior file and the
    exclusion maps (e.g. for the encoder's training crops). The arguments are those of
    :func:`rgi_core.priors.training.train_prior`; ``note`` receives a line when the images are flagged."""
    rc = robust or RobustConfig()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    flags = load_flags(work, images, cfg, rc)
    if flags is None:
        warm_steps = max(1, round(rc.warmup * cfg.steps))
        warm = train_prior(images, dataclasses.replace(cfg, steps=warm_steps), work, out=work / "warm.safetensors",
                           name="warm", progress=progress, log_every=log_every, stop=stop)
        shutil.copyfile(work / STATE_FILE, work / WARM_STATE)
        tiles, where = training_tiles(images, cfg)
        scores = score_tiles(load_prior(str(warm)), tiles, rc, stop)
        exclude, record = flags_from_scores(scores, where, images, cfg.arch.resolution, rc.k, rc.drop)
        record |= {"warmup_steps": warm_steps, "iterations": rc.iterations, "n_init": rc.n_init}
        _save_flags(work / FLAGS_FILE, scores, where, len(images), record)
    else:
        exclude, record = flags
    if note is not None:
        note(f"robust: {record['flagged_tiles']} of {record['tiles']} tiles flagged (score above "
             f"{record['threshold']:.4f}); {record['images_touched']} images lose them")
    data = {**(data_description or {}), "robust": record}
    path = train_prior(images, cfg, work, out=out, name=name, data_description=data, progress=progress,
                       log_every=log_every, stop=stop, exclude=exclude)
    return path, exclude
