"""Evaluate methods on labelled images: built-in held-out sets with synthetic defects, or a user's folder.

Evaluation data never overlaps a prior's training split (:mod:`rgi_core.io.builtin`):

- textures: 64x64 crops at seeded random positions of the *right quarter* (x >= 384) of the texture.
  Half the crops stay clean (for image AUROC), the other half get one defect each, cycling through
  :data:`rgi_core.evaluation.defects.TEXTURE_DEFECTS`; ``patch`` pastes a piece of another texture's held-out quarter.
- digits: held-out images 1500..1796 with one gross corruption each (``salt_pepper`` / ``block`` /
  ``scribble``, 10-25 % of the pixels for the first two).

A labelled folder (:func:`load_labelled`, the input of ``rgi evaluate``) holds images, optional
ground-truth masks ``<stem>_mask.png`` (or ``<stem>.png`` / ``<stem>_mask.png`` in a separate masks folder)
and optional clean references ``<stem>_clean.png``. :func:`export_labelled` writes an :class:`EvalSet` in
that layout.

:func:`run_methods` inverts the same images with each method (images of any size go through the cleaning
pipeline's resize/tile path, :func:`rgi_core.cleaning.invert_images`) and :func:`score_run` computes, for one
method (``nan`` = not applicable, shown as ``n/a``):

- pixel AUROC and max-F1 (= Dice at the best threshold): pooled over every pixel of the images with masks;
- PRO: AU-PRO up to 30 % FPR over the defective images (regions of their masks, their normal pixels);
- image AUROC: image score against "mask has a positive pixel", over images with masks (needs both kinds);
- IoU: median over defective images of ``anomaly map > t`` against the mask, ``t`` = the map threshold
  (0.5, the prior's lambda rule, unless a calibration sets it);
- PSNR / SSIM of the restored image against the clean reference, median over the defective images that
  have one (all images with one when there are no masks), and the same for the input as a baseline;
- at the thresholds: pixel FPR (normal pixels flagged), image FPR/TPR (score above the score threshold);
- images per second of the inversion (all images, one batch of ``batch_size`` at a time).

:func:`evaluate` does all of it on an :class:`EvalSet` (the tables of docs/quality.md).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rgi_core.cleaning import Inverted, Sizing, invert_images
from rgi_core.detectors import DETECTORS
from rgi_core.evaluation import metrics
from rgi_core.evaluation.defects import TEXTURE_DEFECTS, apply_defect
from rgi_core.inversion.config import InversionConfig
from rgi_core.io import builtin
from rgi_core.priors.files import Prior
from rgi_core.settings import resolve
from rgi_core.stopping import StopCheck, check


@dataclass(frozen=True)
class EvalSet:
    """Images (N, C, H, W) with ground truth: clean versions, defect masks (N, 1, H, W) bool, labels (N,)."""

    name: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    kinds: list[str]


def texture_eval_set(texture: str, n: int = 32, size: int = 64, seed: int = 0,
                     kinds: tuple[str, ...] = TEXTURE_DEFECTS) -> EvalSet:
    """``n`` crops of the held-out quarter: the first ``n // 2`` clean, the rest with one defect each."""
    region = torch.from_numpy(builtin.texture(texture, "eval"))  # (1, 512, 128)
    donor_name = next(t for t in builtin.TEXTURES if t != texture)
    donor = torch.from_numpy(builtin.texture(donor_name, "eval"))
    return crops_with_defects(texture, region, donor, n, size, seed, kinds)


def random_crops(region: torch.Tensor, n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` seeded ``size`` x ``size`` crops of region (C, H, W) at uniform positions -> (n, C, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.randint(region.shape[1] - size + 1, (n,), generator=gen).tolist()
    xs = torch.randint(region.shape[2] - size + 1, (n,), generator=gen).tolist()
    return torch.stack([region[:, y : y + size, x : x + size] for y, x in zip(ys, xs, strict=True)])


def crops_with_defects(name: str, region: torch.Tensor, donor: torch.Tensor, n: int, size: int, seed: int,
                       kinds: tuple[str, ...]) -> EvalSet:
    """``n`` seeded ``size`` crops of ``region`` (C, H, W): the first ``n // 2`` clean, the rest with one defect
    each, the kinds in turn (with no kinds every crop stays clean); pasted patches come from ``donor`` (C, H', W')."""
    clean = random_crops(region, n, size, seed)
    corrupted, masks, names = clean.clone(), torch.zeros((n, 1, size, size), dtype=torch.bool), ["none"] * n
    for i in range(n // 2, n) if kinds else ():
        kind = kinds[(i - n // 2) % len(kinds)]
        extra = {"donor": donor} if kind == "patch" else {}
        corrupted[i], masks[i] = apply_defect(clean[i], kind, seed=seed * 10_000 + i, **extra)
        names[i] = kind
    labels = torch.tensor([k != "none" for k in names])
    return EvalSet(name, clean, corrupted, masks, labels, names)


def digits_eval_set(kind: str, n: int = 32, seed: int = 0) -> EvalSet:
    """``n`` held-out digits (from index 1500 on), each with one ``kind`` corruption."""
    clean = torch.from_numpy(builtin.digits("eval")[:n])  # (n, 1, 32, 32)
    corrupted, masks = clean.clone(), torch.zeros((len(clean), 1, 32, 32), dtype=torch.bool)
    for i in range(len(clean)):
        corrupted[i], masks[i] = apply_defect(clean[i], kind, seed=seed * 10_000 + i)
    return EvalSet(f"digits/{kind}", clean, corrupted, masks, torch.ones(len(clean), dtype=torch.bool),
                   [kind] * len(clean))


@dataclass(frozen=True)
class Labelled:
    """One image with its optional ground truth.

    Attributes:
        name: the image's path relative to the data folder, without extension (e.g. ``sub/img-003``).
        image: ``(C, H, W)`` in [0, 1], C = 1 or 3 as stored.
        mask: ``(1, H, W)`` bool defect mask, or ``None`` (unknown).
        clean: ``(C, H, W)`` clean reference, or ``None``.
    """

    name: str
    image: torch.Tensor
    mask: torch.Tensor | None = None
    clean: torch.Tensor | None = None

    @property
    def defective(self) -> bool | None:
        """The image label: the mask has a positive pixel (``None`` without a mask)."""
        return None if self.mask is None else bool(self.mask.any())


def items_from_set(data: EvalSet) -> list[Labelled]:
    """An :class:`EvalSet` as labelled items named ``<set>-<index>[-<defect>]`` (e.g. ``brick-013-scratch``)."""
    stem = data.name.replace("/", "-")
    return [Labelled(f"{stem}-{i:03d}" + ("" if kind in stem else f"-{kind}"), data.corrupted[i], data.masks[i],
                     data.clean[i]) for i, kind in enumerate(data.kinds)]


def export_labelled(items: list[Labelled], out_dir: str) -> list[str]:
    """Write items as a labelled folder: ``<name>.png``, ``<name>_mask.png``, ``<name>_clean.png``; returns URIs."""
    import fsspec

    from rgi_core.io.fs import uri_of
    from rgi_core.io.images import encode_png

    fs, root = fsspec.core.url_to_fs(out_dir)
    written = []
    for it in items:
        parts = [("", it.image), ("_mask", it.mask), ("_clean", it.clean)]
        for suffix, t in parts:
            if t is None:
                continue
            path = posixpath.join(root, f"{it.name}{suffix}.png")
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            fs.pipe_file(path, encode_png(t.float().numpy()))
            written.append(uri_of(fs, path))
    return written


def _stem_index(source: str) -> dict[str, str]:
    """Image files under ``source`` keyed by relative path without extension."""
    import fsspec

    from rgi_core.io.fs import uri_of
    from rgi_core.io.images import list_images

    fs, root = fsspec.core.url_to_fs(source)
    prefix = uri_of(fs, root.rstrip("/")) + "/"
    out = {}
    for uri in list_images(source):
        rel = uri[len(prefix):] if uri.startswith(prefix) else posixpath.basename(uri)
        out[posixpath.splitext(rel)[0]] = uri
    return out


def load_labelled(data: str, masks: str | None = None) -> tuple[list[Labelled], list[str]]:
    """Read a labelled folder (local or fsspec URL); returns (items sorted by name, errors ``"uri: message"``).

    An image that cannot be decoded, or whose mask/clean reference cannot be decoded or has another size,
    becomes an error and is left out. Masks are read as gray, positive where > 0.5.
    """
    import fsspec

    from rgi_core.io.images import ImageDecodeError, decode_image, decode_native

    files = _stem_index(data)
    images = {k: v for k, v in files.items() if not k.endswith(("_mask", "_clean"))}
    mask_files = {k[: -len("_mask")]: v for k, v in files.items() if k.endswith("_mask")}
    if masks is not None:
        mask_files = {k.removesuffix("_mask"): v for k, v in _stem_index(masks).items()}
    if not images:
        raise ValueError(f"no images under {data} (files named *_mask / *_clean are ground truth, not inputs)")

    def read(uri: str) -> bytes:
        with fsspec.open(uri, "rb") as f:
            return f.read()

    items, errors = [], []
    for name, uri in sorted(images.items()):
        try:
            x = torch.from_numpy(decode_native(read(uri), name=uri).pixels)  # (C, H, W)
            mask = clean = None
            if name in mask_files:
                mask = torch.from_numpy(decode_image(read(mask_files[name]), 1, name=mask_files[name])) > 0.5
            if f"{name}_clean" in files:
                clean = torch.from_numpy(decode_image(read(files[f"{name}_clean"]), x.shape[0], name=uri))
            for what, t in (("mask", mask), ("clean reference", clean)):
                if t is not None and t.shape[-2:] != x.shape[-2:]:
                    raise ImageDecodeError(f"{what} is {tuple(t.shape[-2:])}, the image {tuple(x.shape[-2:])}")
            items.append(Labelled(name, x, mask, clean))
        except (ImageDecodeError, OSError) as exc:
            errors.append(f"{uri}: {exc}")
    return items, errors


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds: anomaly-map value for pixels, image score for images (``None``: not set)."""

    map: float = 0.5
    score: float | None = None
    source: str = "default (map 0.5 = the prior's lambda rule; score: the prior's score_threshold)"


@dataclass(frozen=True)
class MethodRun:
    """One method's outputs on every image (same order as the items) and its inversion time."""

    method: str
    config: InversionConfig
    outputs: list[Inverted]
    seconds: float


def run_methods(prior: Prior, images: list[torch.Tensor], methods: tuple[str, ...], sizing: Sizing = "resize",
                batch_size: int = 32, progress: Callable[[str], None] | None = None,
                calibration: dict[str, Any] | None = None, stop: StopCheck | None = None,
                **overrides: object) -> list[MethodRun]:
    """Invert the same images (each (C, H, W), any size) with every method; config overrides (and a calibration
    document, :func:`rgi_core.settings.resolve`) are shared.

    ``stop`` is asked before every batch and every solver step; a stop raises :class:`rgi_core.stopping.Cancelled`.
    """
    runs = []
    for method in methods:
        cfg = resolve(prior, method, overrides=overrides, calibration=calibration).config
        outputs: list[Inverted] = []
        seconds = 0.0
        for start in range(0, len(images), batch_size):
            check(stop, f"evaluation stopped in {method} at image {start} of {len(images)}")
            chunk = images[start : start + batch_size]
            inverted, per_image = invert_images(chunk, prior, cfg, sizing, stop)
            outputs += inverted
            seconds += per_image * len(chunk)
        if progress:
            progress(f"{method}: {len(images)} images in {seconds:.1f} s")
        runs.append(MethodRun(method, cfg, outputs, seconds))
    return runs


@dataclass(frozen=True)
class MethodScores:
    """One method's metrics (see the module docstring); ``nan`` where not applicable."""

    method: str
    pixel_auroc: float
    image_auroc: float
    pro: float
    max_f1: float
    mask_iou: float
    psnr_db: float
    psnr_input_db: float
    ssim: float
    ssim_input: float
    pixel_fpr: float
    image_fpr: float
    image_tpr: float
    images_per_second: float
    failed: int = 0

    @property
    def seconds_per_image(self) -> float:
        return 1.0 / self.images_per_second if self.images_per_second > 0 else float("nan")


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    """Maps/masks of any sizes pooled as one (1, 1, 1, N) batch for pooled pixel metrics."""
    return torch.cat([t.reshape(-1) for t in ts]).view(1, 1, 1, -1)


def _median(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else float("nan")


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def per_image_iou(amap: torch.Tensor, mask: torch.Tensor, threshold: float) -> float:
    """IoU of ``amap > threshold`` with the mask; for an all-normal mask, the share of pixels left unflagged."""
    if not bool(mask.any()):
        return 1.0 - float((amap > threshold).double().mean())
    return float(metrics.iou(amap[None], mask[None], threshold)[0])


def score_run(items: list[Labelled], run: MethodRun, thresholds: Thresholds = Thresholds()) -> MethodScores:
    """Metrics of one method's outputs against the items' ground truth (module docstring)."""
    ok = [(it, o) for it, o in zip(items, run.outputs, strict=True) if not o.error]
    labelled = [(it, o) for it, o in ok if it.mask is not None]
    bad = [(it, o) for it, o in labelled if it.defective]
    nan = float("nan")
    pixel_auroc = max_f1 = pro = pixel_fpr = image_auroc = nan
    if labelled:
        maps, gts = [o.anomaly_map for _, o in labelled], [it.mask for it, _ in labelled]
        pixel_auroc = metrics.pixel_auroc(_flat(maps), _flat(gts))
        max_f1 = metrics.max_f1(_flat(maps), _flat(gts))[0]
        normal = torch.cat([m.reshape(-1)[~g.reshape(-1)] for m, g in zip(maps, gts, strict=True)])
        pixel_fpr = float((normal > thresholds.map).double().mean()) if normal.numel() else nan
        scores = torch.tensor([o.score for _, o in labelled])
        image_auroc = metrics.image_auroc(scores, torch.tensor([bool(it.defective) for it, _ in labelled]))
    if bad:
        pro = metrics.pro_auc([o.anomaly_map for _, o in bad], [it.mask for it, _ in bad])
    references = [(it, o) for it, o in (bad if labelled else ok) if it.clean is not None]

    def restoration(metric: Callable[..., torch.Tensor], which: str) -> float:
        return _median([float(metric((o.restored if which == "restored" else it.image)[None].float(),
                                     it.clean[None].float())[0]) for it, o in references])

    s = thresholds.score
    return MethodScores(
        method=run.method,
        pixel_auroc=pixel_auroc,
        image_auroc=image_auroc,
        pro=pro,
        max_f1=max_f1,
        mask_iou=_median([per_image_iou(o.anomaly_map, it.mask, thresholds.map) for it, o in bad]),
        psnr_db=restoration(metrics.psnr, "restored"),
        psnr_input_db=restoration(metrics.psnr, "input"),
        ssim=restoration(metrics.ssim, "restored"),
        ssim_input=restoration(metrics.ssim, "input"),
        pixel_fpr=pixel_fpr,
        image_fpr=nan if s is None else _rate([o.score > s for it, o in labelled if not it.defective]),
        image_tpr=nan if s is None else _rate([o.score > s for _, o in bad]),
        images_per_second=len(items) / run.seconds if run.seconds > 0 else nan,
        failed=len(items) - len(ok),
    )


@dataclass(frozen=True)
class DetectorScores:
    """One detector's own image score within one method's run (:attr:`Inverted.detector_scores`).

    Attributes:
        method / detector: whose run, which detector.
        images: labelled images the detector scored (a triaged image has no residual score).
        image_auroc: AUROC of the detector's own score, defective against clean.
        pixel_auroc: pooled pixel AUROC of the detector's own map over the images it scored that have a mask
            (``nan`` without masks).
        alone: share of the defective images it scored whose own :math:`-\\log_{10} p` is over the score
            threshold, each flagged by this detector alone (``nan`` without a threshold or a calibrated fusion).
    """

    method: str
    detector: str
    images: int
    image_auroc: float
    alone: float
    pixel_auroc: float = math.nan


def score_detectors(items: list[Labelled], run: MethodRun, thresholds: Thresholds = Thresholds()
                    ) -> list[DetectorScores]:
    """What each detector contributes to one method's run: its own image AUROC over the images it scored, and
    how many defective images it would flag alone."""
    ok = [(it, o) for it, o in zip(items, run.outputs, strict=True) if not o.error and it.defective is not None]
    names = [n for n in DETECTORS if any(n in o.detector_scores for _, o in ok)]
    rows = []
    for name in names:
        scored = [(it, o) for it, o in ok if math.isfinite(o.detector_scores.get(name, math.nan))]
        labels = torch.tensor([bool(it.defective) for it, _ in scored])
        auroc = (metrics.image_auroc(torch.tensor([o.detector_scores[name] for _, o in scored]), labels)
                 if scored and 0 < int(labels.sum()) < len(scored) else math.nan)
        bad = [o.detector_surprise.get(name, math.nan) for it, o in scored if it.defective]
        alone = (math.nan if thresholds.score is None or not bad or any(math.isnan(v) for v in bad)
                 else _rate([v > thresholds.score for v in bad]))
        mapped = [(it, o.detector_maps[name]) for it, o in scored if it.mask is not None and name in o.detector_maps]
        gts = [it.mask for it, _ in mapped]
        pixel = (metrics.pixel_auroc(_flat([m for _, m in mapped]), _flat(gts))
                 if mapped and bool(_flat(gts).any()) and not bool(_flat(gts).all()) else math.nan)
        rows.append(DetectorScores(run.method, name, len(scored), auroc, alone, pixel))
    return rows


def format_detectors(title: str, rows: list[DetectorScores]) -> str:
    """A Markdown table with one row per method and detector (:func:`score_detectors`)."""
    lines = [f"**{title}**", "", "| method | detector | images | image AUROC | pixel AUROC | defective flagged alone |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.detector} | {r.images} | {_fmt(r.image_auroc)} | {_fmt(r.pixel_auroc)} | "
              f"{_fmt(r.alone)} |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class PaperScores:
    """One method's scores under the RGI paper's own protocol (official ``utils/eval.py``): over the defective
    images, each image's pixel AUROC and its best Dice (:func:`rgi_core.evaluation.metrics.best_dice_per_image`:
    the map min-max normalised per image, the best of 101 thresholds), mean and standard deviation, for the
    anomaly map and for the mask M. The paper applies it to its sparse outlier term; per-image normalisation and
    the best threshold per image make these numbers higher than the pooled ones of :class:`MethodScores`."""

    method: str
    images: int
    map_dice: float
    map_dice_std: float
    map_auroc: float
    map_auroc_std: float
    mask_dice: float
    mask_dice_std: float
    mask_auroc: float
    mask_auroc_std: float


def score_paper(items: list[Labelled], run: MethodRun) -> PaperScores:
    """The RGI paper's protocol on one method's run (:class:`PaperScores`)."""
    bad = [(it, o) for it, o in zip(items, run.outputs, strict=True) if not o.error and it.defective]

    def both(maps: list[torch.Tensor]) -> tuple[float, float, float, float]:
        if not bad:
            return (math.nan,) * 4
        dice = torch.cat([metrics.best_dice_per_image(m[None], it.mask[None]) for m, (it, _) in zip(maps, bad,
                                                                                                       strict=True)])
        auroc = torch.cat([metrics.pixel_auroc_per_image(m[None], it.mask[None]) for m, (it, _) in zip(maps, bad,
                                                                                                          strict=True)])
        return (float(dice.mean()), float(dice.std(unbiased=False)), float(auroc.nanmean()),
                float(auroc[~auroc.isnan()].std(unbiased=False)))

    return PaperScores(run.method, len(bad), *both([o.anomaly_map for _, o in bad]), *both([o.mask for _, o in bad]))


def format_paper(title: str, rows: list[PaperScores]) -> str:
    """A Markdown table of :class:`PaperScores`, mean ± std as the paper prints them."""
    lines = [f"**{title}**", "", "| method | defective images | Dice, anomaly map | pixel AUROC, anomaly map | "
             "Dice, mask M | pixel AUROC, mask M |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.images} | {_fmt(r.map_dice)} ± {_fmt(r.map_dice_std)} | "
                     f"{_fmt(r.map_auroc)} ± {_fmt(r.map_auroc_std)} | {_fmt(r.mask_dice)} ± {_fmt(r.mask_dice_std)} | "
                     f"{_fmt(r.mask_auroc)} ± {_fmt(r.mask_auroc_std)} |")
    return "\n".join(lines)


def family_of(name: str) -> str:
    """An item's defect family: its folder (MVTec AD's layout, ``test/crack/000.png`` -> ``test/crack``); ``""``
    for an item at the top of the data folder."""
    return name.rsplit("/", 1)[0] if "/" in name else ""


def score_families(items: list[Labelled], run: MethodRun, thresholds: Thresholds = Thresholds(),
                   family: Callable[[Labelled], str] = lambda it: family_of(it.name)) -> dict[str, MethodScores]:
    """One method's metrics per defect family: each family's defective items against every clean item
    (mask all normal), so a family's image AUROC says how well its defects are told from clean images.
    Empty unless the defective items fall in at least two families."""
    clean = [i for i, it in enumerate(items) if it.defective is False]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.defective:
            groups.setdefault(family(it), []).append(i)
    if len(groups) < 2:
        return {}
    out = {}
    for name, members in sorted(groups.items()):
        idx = clean + members
        sub = MethodRun(run.method, run.config, [run.outputs[i] for i in idx], run.seconds * len(idx) / len(items))
        out[name] = score_run([items[i] for i in idx], sub, thresholds)
    return out


def evaluate(prior: Prior, data: EvalSet, methods: tuple[str, ...] = ("mse", "rgi", "rrgi"),
             **overrides: object) -> list[MethodScores]:
    """Invert ``data.corrupted`` with each method (config overrides shared, e.g. ``iterations``) and score it."""
    return evaluate_by_family(prior, data, methods, **overrides)[""]


def evaluate_by_family(prior: Prior, data: EvalSet, methods: tuple[str, ...] = ("mse", "rgi", "rrgi"),
                       **overrides: object) -> dict[str, list[MethodScores]]:
    """As :func:`evaluate`, with the rows of the whole set under ``""`` and one list of rows per defect kind
    (:func:`score_families`: each kind against every clean crop) when the set has two kinds or more."""
    items = items_from_set(data)
    runs = run_methods(prior, [it.image for it in items], methods, batch_size=max(1, len(items)), **overrides)
    kind = {it.name: k for it, k in zip(items, data.kinds, strict=True)}
    out: dict[str, list[MethodScores]] = {"": [score_run(items, run) for run in runs]}
    for run in runs:
        for name, scores in score_families(items, run, family=lambda it: kind[it.name]).items():
            out.setdefault(name, []).append(scores)
    return out


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def format_scores(title: str, rows: list[MethodScores]) -> str:
    """A Markdown table of scored methods (``n/a`` where a metric does not apply)."""
    lines = [f"**{title}**", "",
             *_header()]
    for r in rows:
        lines.append(_row(r.method, r))
    return "\n".join(lines)


def format_families(title: str, families: dict[str, list[MethodScores]]) -> str:
    """A Markdown table with one row per defect family and method (:func:`score_families`)."""
    lines = [f"**{title}**", "", *_header("family | method")]
    for name, rows in families.items():
        lines += [_row(f"{name} | {r.method}", r) for r in rows]
    return "\n".join(lines)


def _header(first: str = "method") -> list[str]:
    return [f"| {first} | pixel AUROC | PRO | image AUROC | max-F1 | IoU@t | PSNR restored | PSNR input | "
             "SSIM restored | SSIM input | images/s |",
            "|---" * (first.count("|") + 11) + "|"]


def _row(first: str, r: MethodScores) -> str:
    return (f"| {first} | {_fmt(r.pixel_auroc)} | {_fmt(r.pro)} | {_fmt(r.image_auroc)} | "
            f"{_fmt(r.max_f1)} | {_fmt(r.mask_iou)} | {_fmt(r.psnr_db, 2)} | {_fmt(r.psnr_input_db, 2)} | "
            f"{_fmt(r.ssim)} | {_fmt(r.ssim_input)} | {_fmt(r.images_per_second, 2)} |")


# ----------------------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class EvalReport:
    """Everything one ``rgi evaluate`` run produced: items, per-method outputs and scores, thresholds."""

    items: list[Labelled]
    runs: list[MethodRun]
    scores: list[MethodScores]
    thresholds: Thresholds
    meta: dict[str, Any] = field(default_factory=dict)
    families: dict[str, list[MethodScores]] = field(default_factory=dict)  # family -> one row per method
    detectors: list[DetectorScores] = field(default_factory=list)  # one row per method and detector


def evaluate_labelled(prior: Prior, items: list[Labelled], methods: tuple[str, ...], sizing: Sizing = "resize",
                      thresholds: Thresholds = Thresholds(), batch_size: int = 32,
                      progress: Callable[[str], None] | None = None, meta: dict[str, Any] | None = None,
                      calibration: dict[str, Any] | None = None, stop: StopCheck | None = None,
                      **overrides: object) -> EvalReport:
    """Run every method on the items and score each run (``stop``: as :func:`run_methods`)."""
    if not items:
        raise ValueError("no images to evaluate")
    runs = run_methods(prior, [it.image for it in items], methods, sizing, batch_size, progress, calibration, stop,
                       **overrides)
    families: dict[str, list[MethodScores]] = {}
    for r in runs:
        for name, scores in score_families(items, r, thresholds).items():
            families.setdefault(name, []).append(scores)
    return EvalReport(items, runs, [score_run(items, r, thresholds) for r in runs], thresholds, dict(meta or {}),
                      families, [row for r in runs for row in score_detectors(items, r, thresholds)])


def _jsonable(v: Any) -> Any:
    """NaN/inf -> None (strict JSON); recurse into dicts and lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _quality(it: Labelled, o: Inverted, t: Thresholds) -> float:
    """Per-image quality used to rank worst/best cases: IoU, else restored PSNR, else minus the score."""
    if o.error:
        return -math.inf
    if it.mask is not None:
        return per_image_iou(o.anomaly_map, it.mask, t.map)
    if it.clean is not None:
        return float(metrics.psnr(o.restored[None].float(), it.clean[None].float())[0])
    return -o.score


def report_json(report: EvalReport) -> dict[str, Any]:
    """The ``metrics.json`` document: metadata, thresholds, per-method metrics and per-image results."""
    per_image = []
    for i, it in enumerate(report.items):
        row: dict[str, Any] = {"name": it.name, "defective": it.defective, "has_clean": it.clean is not None}
        for run in report.runs:
            o = run.outputs[i]
            row[run.method] = {"error": o.error} if o.error else {
                "score": o.score, "quality": _quality(it, o, report.thresholds),
                "flagged_fraction": float((o.anomaly_map > report.thresholds.map).double().mean())}
        per_image.append(row)
    return _jsonable({
        **report.meta,
        "images": len(report.items),
        "with_masks": sum(it.mask is not None for it in report.items),
        "defective": sum(bool(it.defective) for it in report.items),
        "with_clean": sum(it.clean is not None for it in report.items),
        "thresholds": asdict(report.thresholds),
        "methods": {s.method: {**asdict(s), "config": r.config.to_dict(), "config_hash": r.config.config_hash()}
                    for s, r in zip(report.scores, report.runs, strict=True)},
        "families": {name: {s.method: asdict(s) for s in rows} for name, rows in report.families.items()},
        "detectors": [asdict(r) for r in report.detectors],
        "per_image": per_image,
    })


def curves_png(report: EvalReport) -> tuple[bytes, bytes]:
    """(ROC PNG: pixel and image ROC per method, PRO PNG: PRO against FPR per method)."""
    from rgi_core.evaluation.plots import curves_png as draw

    labelled = [i for i, it in enumerate(report.items) if it.mask is not None]
    bad = [i for i in labelled if report.items[i].defective]
    pixel, image, pro = {}, {}, {}
    for run in report.runs:
        lab = [i for i in labelled if not run.outputs[i].error]
        gts = [report.items[i].mask for i in lab]
        empty = (torch.empty(0), torch.empty(0))
        pixel[run.method] = metrics.roc_curve(_flat([run.outputs[i].anomaly_map for i in lab]), _flat(gts)) \
            if lab else empty
        image[run.method] = metrics.roc_curve(torch.tensor([run.outputs[i].score for i in lab]),
                                              torch.tensor([bool(report.items[i].defective) for i in lab])) \
            if lab else empty
        b = [i for i in bad if not run.outputs[i].error]
        pro[run.method] = metrics.pro_curve([run.outputs[i].anomaly_map for i in b],
                                            [report.items[i].mask for i in b]) if b else empty
    area = {name: {s.method: getattr(s, name) for s in report.scores} for name in ("pixel_auroc", "image_auroc", "pro")}
    roc = draw([("pixel ROC", "false-positive rate", "true-positive rate", pixel, area["pixel_auroc"]),
                ("image ROC", "false-positive rate", "true-positive rate", image, area["image_auroc"])])
    pro_png = draw([("PRO (AU-PRO to FPR 0.3)", "pixel false-positive rate", "per-region overlap", pro, area["pro"])],
                   fpr_limit=0.3)
    return roc, pro_png


def worst_best_grid(report: EvalReport, k: int = 4, size: int = 96) -> bytes:
    """Grid PNG of the ``k`` worst and ``k`` best images by the first method's per-image quality.

    Columns: input, ground-truth mask (blank without one), then each method's restored image and anomaly map.
    Quality is the IoU at the map threshold (an all-normal mask: the share of pixels left unflagged), else
    the restored PSNR against the clean reference, else minus the score (worst = most anomalous).
    """
    from rgi_core.evaluation.grids import image_grid
    from rgi_core.io.images import encode_png

    first = report.runs[0]
    quality = [_quality(it, o, report.thresholds) for it, o in zip(report.items, first.outputs, strict=True)]
    order = sorted(range(len(report.items)), key=lambda i: quality[i])
    k = min(k, len(order) // 2) or min(1, len(order))
    picks = [("worst", i) for i in order[:k]] + [("best", i) for i in order[::-1][:k]]

    def png(t: torch.Tensor | None) -> bytes:
        return b"" if t is None or t.numel() == 0 else encode_png(t.float().numpy())

    rows = []
    for tag, i in picks:
        it = report.items[i]
        cells = [png(it.image), png(None if it.mask is None else it.mask.float())]
        for run in report.runs:
            cells += [png(run.outputs[i].restored), png(run.outputs[i].anomaly_map)]
        rows.append((f"{tag}: {it.name[-28:]}  {quality[i]:.3f}", cells))
    columns = ["input", "truth"] + [f"{r.method} {what}" for r in report.runs for what in ("restored", "map")]
    return image_grid(rows, columns, size=size)


def write_evaluation(report: EvalReport, out_dir: str, grid_k: int = 4) -> dict[str, str]:
    """Write ``metrics.json``, ``roc.png``, ``pro.png`` and ``grid.png`` under ``out_dir``; returns their URIs."""
    import fsspec

    from rgi_core.io.fs import uri_of

    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    roc, pro = curves_png(report)
    files = {"roc.png": roc, "pro.png": pro, "grid.png": worst_best_grid(report, grid_k)}
    uris = {name: uri_of(fs, posixpath.join(root, name)) for name in ("metrics.json", *files)}
    doc = report_json(report) | {"files": uris}
    files["metrics.json"] = json.dumps(doc, indent=2, allow_nan=False).encode()
    for name, data in files.items():
        fs.pipe_file(posixpath.join(root, name), data)
    return uris
