"""Frozen, typed configs: one per method, with the authors' defaults and where each number comes from.

Units: images are in [0, 1] and every loss term is a per-pixel *mean*, so ``lam`` has a direct reading:
with the L2 fidelity the RGI mask switches a pixel on exactly when its residual exceeds
``sqrt(lam / 2)`` (see :func:`rgi_core.detectors.residual.closed_form_mask`). Papers that work on [-1, 1]
images quote a ``lam`` four times larger for the same threshold.

Methods differ by config, never by plumbing: :func:`rgi_core.inversion.solver.invert` reads the config's
``method`` and switches loss terms and parameter groups on or off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:  # the residual rules own it; importing them here would load torch with every config
    from rgi_core.detectors.residual import Fidelity

#: lam used when neither the config nor the prior's metadata sets one: residual threshold 0.16 in [0, 1]
#: intensity units, the RGI paper's 0.2 on [-1, 1] images (their range: 0.07-0.1 inpainting faces,
#: 0.4 anomaly detection). On random generators (image std 0.11) 0.02 left half the images in a wrong
#: basin while 0.05-0.1 recovered them; priors store a value calibrated on clean data.
DEFAULT_LAMBDA = 0.05

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: RGI's mask layout: one mask per pixel, its channels' residuals pooled, or one per channel (the official RGI code's)
MaskChannels = Literal["shared", "per_channel"]
MASK_CHANNELS: tuple[str, ...] = ("shared", "per_channel")


@dataclass(frozen=True)
class InversionConfig:
    """Settings shared by every method. Subclasses fix ``method`` and change defaults.

    Attributes:
        iterations: optimisation steps (RGI paper: 2000).
        lr_z: Adam learning rate on the latent (RGI paper: 0.1).
        n_init: best-of-N latent initialisation, candidates scored per image (RGI paper: ~1000).
        init_std: std of the Gaussian the candidates are drawn from (1.0 = the GAN's training prior).
        n_starts: multi-start: the ``n_starts`` best candidates (at most ``n_init``) of each image each run
            ``start_iterations`` steps of the objective, and the solve goes on from the one with the lowest
            objective (ours; 1 = the single best candidate, as in the RGI paper). Best-of-N ranks candidates
            before any descent, and on held-out brick which start ends in a poor fit was not predictable from
            that rank (docs/design.md).
        start_iterations: steps of each start before the choice; ``None`` = ``iterations // 8``. They come
            before the ``iterations`` of the solve.
        lam: sparsity weight of the mask; ``None`` = the prior's calibrated default
            (metadata ``defaults.lam``) or :data:`DEFAULT_LAMBDA`.
        fidelity: ``"l2"`` or ``"l1"`` per-pixel data term (RGI paper uses both).
        latent_reg: weight of ``||z||^2 / 2`` per latent element (0 = off, as in RGI).
        map_sigma: Gaussian smoothing (pixels) of the residual before the anomaly map is formed (ours;
            0 keeps maps pixel-exact, see :mod:`rgi_core.detectors.residual`).
        score_topk: image score = mean of the top ``score_topk`` fraction of the anomaly map (ours).
        score_sigma: Gaussian blur (pixels) of the map before the score's top-k (ours).
        map_level: the level of the joined map that the written anomaly map reads as 0.5, so ``> 0.5`` (the
            catalog's ``anomaly_fraction``) flags what the prior's calibrated pixel threshold flags. The map is
            shifted in log-odds (:func:`rgi_core.detectors.fusion.relevel`); its ranking and the image score do
            not change. 0.5 = as joined: a calibrated fusion (:mod:`rgi_core.detectors.fusion`) already reads 0.5
            at its own map threshold, and the older rule's residual map where the residual is the mask threshold,
            which is where priors without a fusion may store another level. digits-32 stores 0.4: on its
            validation digits' gross corruption the level nearest 0.5 whose pooled IoU is within 0.03 of the best
            (docs/design.md).
        residual_map: score the residual of the fit (:mod:`rgi_core.detectors.residual`), the solve's own
            detector; off, the map and score come from the other detectors alone (the solve still restores).
        texture_map: fuse the prior's local texture statistics (:mod:`rgi_core.detectors.texture`) into the anomaly
            map and score when its metadata has them (``defaults.texture_stats``; the shipped texture
            priors do). Off for ``mse``, the residual-only baseline.
        learned_map: fuse the prior's learned anomaly segmenter (:mod:`rgi_core.detectors.segmenter`) the same way
            when the prior file carries one (the shipped texture priors do). Off for ``mse``.
        context_map: let the triage read the prior's context model (:mod:`rgi_core.detectors.context`) beside the
            texture statistics and the segmenter when the prior file carries one (of the shipped priors,
            ``brick-64``); it joins the triage score only, never a solved image's. Off for ``mse``.
        triage: run the full solve only for images the prior's image-reading detectors find suspect; the others
            keep their pixels and take the detectors' map and score (:mod:`rgi_core.inversion.triage`); and with a
            restoration stage, stop the images whose score at its switch is under the prior's switch threshold
            there, unrestored (``defaults.switch_triage``); without one, stop the solved images whose score at the
            prior's early read is under its threshold, unrestored (``defaults.early_read``). ``None`` = on when the
            prior stores any of them (the shipped texture priors a triage, ``digits-32`` a switch triage). Off for
            ``mse``, the residual-only baseline.
        encoder: start from the prior's encoder as well (:mod:`rgi_core.priors.encoder`): E(x) joins the best-of-N
            candidates, and is the only one with ``n_init`` 1. ``None`` = on when the prior carries an encoder.
        learned_phi: for a known degradation, BIGPrior's fusion takes phi from the prior's phi-net for that
            degradation (:mod:`rgi_core.priors.phinet`) instead of the heuristic of the residual. ``None`` = where the
            prior carries one; mask-free cleaning (the identity) always keeps the heuristic.
        converge_tol: relative change of the loss over the last 10 % of steps that counts as converged.
        stop_tol: adaptive stopping (ours): an image leaves the batch once its objective improved by less than
            ``stop_tol`` (relative) over the last ``stop_window`` steps, its products frozen there; the
            batch shrinks, so a step costs less. ``iterations`` stays the cap and each image's steps are in its
            diagnostics. Checked only once the method's schedule has settled (after R-RGI's and DGP's last
            fine-tuning stage starts, after RGI's TV phase), so every image runs every stage. 0 = off. 0.01 over
            100 steps: on 64 held-out brick crops at the CLI defaults a solve cost 2.2x less (813 steps per image
            instead of 2000) for restored PSNR 0.24 dB lower and no image flagged differently; on 400 crops of
            fresh seeds, 2.5x less with image AUROC -0.009 but PSNR -1.04 dB (``python benchmarks/cost.py run``,
            docs/benchmarks.md, docs/design.md).
        stop_window: the window of ``stop_tol``, in steps.
        precision: ``"fp32"``, or ``"bf16"``: the generator runs under bfloat16 autocast (its convolutions and
            matrix products in bfloat16, the loss and the optimiser in float32). Off by default: on 32 held-out
            brick crops it kept AUROC within 0.004 but ran 11.9x slower on a CPU without bfloat16 instructions
            (``python benchmarks/precision.py``, docs/benchmarks.md); for GPUs with bfloat16 units.
        tf32: on a CUDA device, let float32 matrix products and convolutions use TensorFloat-32 (10-bit mantissa)
            during the solve; nothing elsewhere.
        seed: seeds the latent candidates; a given image starts from the same candidates in any batch.
        device: ``"auto"`` (cuda, then mps, then cpu) or any torch device string.

    Fields a prior calibrates (:data:`PRIOR_DEFAULT_FIELDS`: ``lam``, ``map_sigma``, ``score_topk``,
    ``score_sigma``, ``map_level``, RGI's ``mask_tv``, ``mask_tv_until``, ``restore_lam``, ``encoder_iterations``,
    ``encoder_n_init`` and ``mask_channels``) default to ``None``: the prior's
    value from its metadata, else :data:`FALLBACKS` (``lam``: :data:`DEFAULT_LAMBDA`).
    :func:`rgi_core.inversion.solver.invert` resolves them with :func:`for_prior`, so a config built by hand
    gets the same defaults as the CLI and the flows.
    """

    method: ClassVar[str] = "base"
    #: prior-calibrated fields (:data:`PRIOR_DEFAULT_FIELDS`) this method has but does not take from a prior
    declines_prior_fields: ClassVar[frozenset[str]] = frozenset()

    iterations: int = 2000
    lr_z: float = 0.1
    n_init: int = 1000
    init_std: float = 1.0
    n_starts: int = 1
    start_iterations: int | None = None
    lam: float | None = None
    fidelity: Fidelity = "l2"
    latent_reg: float = 0.0
    map_sigma: float | None = None
    score_topk: float | None = None
    score_sigma: float | None = None
    map_level: float | None = None
    residual_map: bool = True
    texture_map: bool = True
    learned_map: bool = True
    context_map: bool = True
    triage: bool | None = None
    encoder: bool | None = None
    learned_phi: bool | None = None
    converge_tol: float = 1e-3
    stop_tol: float = 0.01
    stop_window: int = 100
    precision: Precision = "fp32"
    tf32: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.n_init < 1:
            raise ValueError(f"n_init must be >= 1, got {self.n_init}")
        if self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
        if self.start_iterations is not None and self.start_iterations < 0:
            raise ValueError(f"start_iterations must be >= 0, got {self.start_iterations}")
        if self.lam is not None and self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if self.fidelity not in ("l2", "l1"):
            raise ValueError(f"fidelity must be 'l2' or 'l1', got {self.fidelity!r}")
        if self.map_sigma is not None and self.map_sigma < 0:
            raise ValueError(f"map_sigma must be >= 0, got {self.map_sigma}")
        if self.score_sigma is not None and self.score_sigma < 0:
            raise ValueError(f"score_sigma must be >= 0, got {self.score_sigma}")
        if self.score_topk is not None and not 0.0 < self.score_topk <= 1.0:
            raise ValueError(f"score_topk must be in (0, 1], got {self.score_topk}")
        if self.map_level is not None and not 0.0 < self.map_level < 1.0:
            raise ValueError(f"map_level must be in (0, 1), got {self.map_level}")
        if not self.stop_tol >= 0:
            raise ValueError(f"stop_tol must be >= 0 (0 = off), got {self.stop_tol}")
        if self.stop_window < 1:
            raise ValueError(f"stop_window must be >= 1, got {self.stop_window}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, including ``method``; round-trips through :func:`config_from_dict`."""
        return {"method": self.method, **dataclasses.asdict(self)}

    def config_hash(self) -> str:
        """Stable short hash of every setting that changes results (device excluded).

        With a single start the multi-start fields change nothing and are left out, so results cleaned before
        they existed keep their hash; with several, the resolved starts and steps are hashed. The stopping
        fields likewise with adaptive stopping off.
        """
        d = self.to_dict()
        d.pop("device")
        if self.stop_tol == 0:
            del d["stop_tol"], d["stop_window"]
        if d["context_map"] or not self.triage:  # read by the triage only; on, which model is part of the model id
            del d["context_map"]
        for k in ("triage", "encoder", "tf32", "learned_phi"):  # off (False, or unset) changes nothing;
            if not d[k]:  # which threshold or encoder is used is part of the model id
                del d[k]
        if self.precision == "fp32":
            del d["precision"]
        if "restore_lam" in d and not d["restore_lam"]:  # no restoration stage (None or 0), as before the fields
            del d["restore_lam"], d["restore_from"]
        if "restore_by" in d and not self.restore_cap_binds(self.iterations):  # type: ignore[attr-defined]
            del d["restore_by"]  # a cap on the switch that does not bind changes nothing
        if d["map_level"] in (0.5, None):  # the map as joined, the only reading before the field existed
            del d["map_level"]
        if d.get("mask_channels", "shared") in ("shared", None):  # the one layout before the field existed
            d.pop("mask_channels", None)
        for k in ("encoder_iterations", "encoder_n_init"):  # the encoder's budget, where it applies
            if k in d and not (d[k] and self.encoder):
                del d[k]
        if self.residual_map:  # on, as every config before it could be turned off
            del d["residual_map"]
        if d.get("schedule") == "ours":  # DGP's one table, the only one before the paper's were added
            del d["schedule"]
        if self.starts == 1:
            del d["n_starts"], d["start_iterations"]
        else:
            d.update(n_starts=self.starts, start_iterations=self.start_steps)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def starts(self) -> int:
        """The starts actually run: ``n_starts``, at most ``n_init``."""
        return min(self.n_starts, self.n_init)

    @property
    def start_steps(self) -> int:
        """Steps each start runs before the choice (0 with a single start)."""
        if self.starts == 1:
            return 0
        return self.iterations // 8 if self.start_iterations is None else self.start_iterations

    def replace(self, **changes: Any) -> InversionConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class MSEConfig(InversionConfig):
    """Plain GAN inversion ``min_z ||x - G(z)||^2`` (Yeh et al.); the no-mask baseline."""

    method: ClassVar[str] = "mse"

    texture_map: bool = False
    learned_map: bool = False
    context_map: bool = False
    triage: bool | None = False


@dataclass(frozen=True)
class RGIConfig(InversionConfig):
    """Robust GAN inversion: joint Adam on z and the mask M (Mou et al., RGI).

    Attributes:
        lr_mask: Adam learning rate on M (RGI paper: 0.1).
        adv_weight: weight of the optional ``-D(G(z))`` realism term (0 = off).
        mask_tv: weight of the mask's total variation (ours; 0 = off, the paper's element-wise L1 only).
            Corruption is usually contiguous: TV makes a hole in the mask cost its perimeter, so a
            region whose border is flagged is flagged whole, and G is free to explain its inside.
        mask_tv_until: fraction of the mask's steps during which ``mask_tv`` is on (a continuation: TV
            groups the mask into regions while z settles, then M relaxes to the per-pixel rule). The
            mask's steps are all ``iterations``, or those before fine-tuning when R-RGI freezes M.
            Both ``None`` = the prior's default (digits-32 stores TV), else 0 and 1.
        restore_lam: a restoration stage (ours): from ``restore_from`` of the steps on, z and M
            go on under this lam (smaller than ``lam``: the mask takes more, G restores more), with the TV term
            scaled alike and on again for the first ``mask_tv_until`` of the stage. The anomaly map and the image
            score stay those of the fit at the switch, so detection is the single-stage solve's of that length.
            ``None`` = the prior's (digits-32 stores one), else off; 0 = off.
        restore_from: fraction of the steps after which the restoration stage starts.
        restore_by: the step by which the restoration stage has started, whatever ``restore_from`` says: the switch
            is at ``min(restore_from * steps, restore_by)``. 450 is the switch of the 600-step solves the stage
            was chosen with; a longer solve fits for as long before the stage and gives the rest to restoration
            (at 2000 steps on held-out digits, blocks of any fill IoU 0.380 -> 0.467 at the stage's lam/4, image
            AUROC 0.999 -> 0.995 over 594 digits of the gross families: docs/design.md). Solves of up to 600
            steps, the calibration's 300 among them, are not changed. 0 = no cap.
        encoder_iterations: the step cap of a solve that starts from the prior's encoder (``encoder`` on, images
            observed whole): ``min(iterations, encoder_iterations)`` steps. ``None`` = the prior's (brick-64
            stores 300, grass-64 and gravel-64 200: on their validation rows the smallest cap within 0.5 dB
            restored PSNR and 0.01 image AUROC of the full solve, ``python benchmarks/step_cap.py``;
            docs/design.md), else no cap; 0 = no cap.
        encoder_n_init: the random candidates beside the encoder start in such a solve: ``min(n_init,
            encoder_n_init)``, 1 = the encoder start alone (one start, whatever ``n_starts``). The search's
            candidates are decoded once per run and kept, so they cost a run the same however few of its images
            the triage sends to the solve. ``None`` = the prior's (grass-64 and gravel-64 store 1: on their
            validation rows the smallest count within 0.5 dB and 0.01 image AUROC of the full solve,
            ``python benchmarks/step_cap.py --n-inits``), else ``n_init``; 0 = ``n_init``.
        mask_channels: ``"shared"``, one mask per pixel over its channels' pooled residual, or ``"per_channel"``, a
            mask per colour channel (the official RGI code's), so a defect in one channel is not diluted by the
            unchanged others; the written mask and the anomaly map take a pixel's largest channel. Grey images
            are the same either way. ``None`` = the prior's, else ``"shared"``.
    """

    method: ClassVar[str] = "rgi"

    lr_mask: float = 0.1
    adv_weight: float = 0.0
    mask_tv: float | None = None
    mask_tv_until: float | None = None
    restore_lam: float | None = None
    restore_from: float = 0.75
    restore_by: int = 450
    encoder_iterations: int | None = None
    encoder_n_init: int | None = None
    mask_channels: MaskChannels | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_channels is not None and self.mask_channels not in MASK_CHANNELS:
            raise ValueError(f"mask_channels must be one of {MASK_CHANNELS}, got {self.mask_channels!r}")
        if self.mask_tv is not None and self.mask_tv < 0:
            raise ValueError(f"mask_tv must be >= 0, got {self.mask_tv}")
        if self.mask_tv_until is not None and not 0.0 <= self.mask_tv_until <= 1.0:
            raise ValueError(f"mask_tv_until must be in [0, 1], got {self.mask_tv_until}")
        if self.restore_lam is not None and self.restore_lam < 0:
            raise ValueError(f"restore_lam must be >= 0 (0 = off), got {self.restore_lam}")
        if not 0.0 < self.restore_from < 1.0:
            raise ValueError(f"restore_from must be in (0, 1), got {self.restore_from}")
        if self.restore_by < 0:
            raise ValueError(f"restore_by must be >= 0 (0 = no cap), got {self.restore_by}")
        if self.encoder_iterations is not None and self.encoder_iterations < 0:
            raise ValueError(f"encoder_iterations must be >= 0 (0 = no cap), got {self.encoder_iterations}")
        if self.encoder_n_init is not None and self.encoder_n_init < 0:
            raise ValueError(f"encoder_n_init must be >= 0 (0 = n_init), got {self.encoder_n_init}")

    def restoration_switch(self, steps: int, capped: bool = True) -> int | None:
        """The first step of the restoration stage of a solve whose mask runs ``steps`` steps:
        ``min(round(restore_from * steps), restore_by)`` (without the cap when ``capped`` is False or ``restore_by``
        is 0); None without a stage."""
        if not self.restore_lam:
            return None
        at = int(round(self.restore_from * steps))
        return min(at, self.restore_by) if capped and self.restore_by else at

    def restore_cap_binds(self, steps: int) -> bool:
        """Whether ``restore_by`` moves the switch of a ``steps``-step solve (else it changes nothing)."""
        return self.restoration_switch(steps) != self.restoration_switch(steps, capped=False)


@dataclass(frozen=True)
class RRGIConfig(RGIConfig):
    """Relaxed RGI: RGI, then per-image fine-tuning of the generator weights.

    Attributes:
        lr_theta: Adam learning rate on the per-image generator copy (RGI paper: 1e-5).
        finetune_from: fraction of ``iterations`` after which G is fine-tuned (RGI paper: 0.75 for
            inpainting, 0.25 for anomaly detection; ours: 0.5, measured in docs/design.md).
        freeze_mask: once fine-tuning starts, freeze M as its support ``M > 0.5`` so G is fitted on the
            pixels RGI trusts only (paper: frozen for inpainting). With a free mask (the paper's anomaly
            setting) our small generators learned the corruption itself: mask IoU fell from 0.985 to 0.91
            and restoration got worse than RGI, whereas the frozen support gained 2.8-10 dB on every
            off-manifold test image. With a frozen mask the anomaly map scores each pixel with a
            generator that was not fit to it: inside M the final G, outside it G(z) at the freeze
            (docs/design.md; the final residual there is a training residual and hid missed defects).
        stop_tol: 0 (adaptive stopping off): fine-tuning at ``lr_theta`` 1e-5 lowers the objective slowly by
            design, and a plateau rule ended it early: R-RGI's gain over RGI off the generator's range fell
            from over 2 dB to 0.27 dB (tests/test_solvers.py).
    """

    method: ClassVar[str] = "rrgi"
    # it restores by fine-tuning G, and its fine-tuning schedule was not measured under a cap
    declines_prior_fields: ClassVar[frozenset[str]] = frozenset({"restore_lam", "encoder_iterations",
                                                                 "encoder_n_init"})

    lr_theta: float = 1e-5
    finetune_from: float = 0.5
    freeze_mask: bool = True
    stop_tol: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.finetune_from <= 1.0:
            raise ValueError(f"finetune_from must be in [0, 1], got {self.finetune_from}")
        if self.restore_lam:
            raise ValueError("restore_lam is RGI's restoration stage; R-RGI restores by fine-tuning G instead")


DGPSchedule = Literal["paper", "ours"]
DGP_SCHEDULES: tuple[str, ...] = ("paper", "ours")


@dataclass(frozen=True)
class DGPConfig(InversionConfig):
    """Deep Generative Prior for known degradations (Pan et al., DGP).

    Attributes:
        schedule: ``"paper"``: the official per-task stages (:mod:`rgi_core.inversion.schedules`: per stage the
            latent's and the generator's rates, how many generator blocks are fine-tuned, the MSE and feature
            weights; Adam without momentum, as the official BigGAN optimiser), chosen by the degradation
            (inpainting, colourisation, super-resolution; reconstruction for the identity and denoising).
            ``"ours"``: one table for every task: ``lr_z`` throughout, block k of S fine-tuned from step
            k * T / S at ``lr_theta * stage_lr_decay ** k``, fidelity weight 1, the last ``dfeat_layers``
            discriminator features. ``lr_z``, ``lr_theta``, ``stage_lr_decay``, ``dfeat_weight`` and
            ``dfeat_layers`` apply to ``"ours"`` only. ``"paper"`` by default: on held-out images it restored as
            well or better in 5 of 6 cells and 3.2 dB worse for inpainting with digits-32's global latent, where
            the official z rate barely moves the latent (``python benchmarks/known_degradations.py``, docs/design.md).
        dfeat_weight: weight of the discriminator-feature L1 distance (DGP: perceptual D loss).
        dfeat_layers: how many of the discriminator's last feature blocks to compare (DGP: the last few).
        lr_theta: Adam lr of the first (shallowest) fine-tuning stage (ours, scaled for small GANs).
        stage_lr_decay: lr factor per deeper stage (DGP: lower lr for deeper blocks).
        n_init / init_std: best of 500 z by D-feature distance (DGP); DGP draws z ~ N(0, 0.3^2) to match
            BigGAN's truncation, our priors are trained on N(0, I) so we draw from that.
        latent_reg: 0.02 ||z||^2 / 2 (DGP).

    Adaptive stopping is off (``stop_tol`` 0), as for R-RGI: the last stage fine-tunes slowly by design.
    """

    method: ClassVar[str] = "dgp"

    n_init: int = 500
    latent_reg: float = 0.02
    iterations: int = 1000
    schedule: DGPSchedule = "paper"
    dfeat_weight: float = 1.0
    dfeat_layers: int = 2
    lr_theta: float = 1e-4
    stage_lr_decay: float = 0.5
    stop_tol: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in DGP_SCHEDULES:
            raise ValueError(f"schedule must be one of {DGP_SCHEDULES}, got {self.schedule!r}")


CONFIGS: dict[str, type[InversionConfig]] = {
    c.method: c for c in (MSEConfig, RGIConfig, RRGIConfig, DGPConfig)
}


def _config_class(method: str) -> tuple[type[InversionConfig], set[str]]:
    """The config class of ``method`` and its field names."""
    try:
        cls = CONFIGS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(CONFIGS)}") from None
    return cls, {f.name for f in dataclasses.fields(cls)}


def mask_per_channel(config: InversionConfig, channels: int) -> bool:
    """Whether a solve of ``config`` on images of ``channels`` channels keeps a mask per channel: RGI's
    ``mask_channels="per_channel"`` on colour images (a grey image has one channel either way)."""
    return getattr(config, "mask_channels", None) == "per_channel" and channels > 1


def make_config(method: str, **overrides: Any) -> InversionConfig:
    """The config of ``method`` with paper defaults, overriding the given fields (``None`` = keep)."""
    cls, fields = _config_class(method)
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"{method} config has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
    return cls(**{k: v for k, v in overrides.items() if v is not None})


#: Prior-metadata ``defaults`` that a config takes over when the caller leaves them unset.
PRIOR_DEFAULT_FIELDS = ("lam", "map_sigma", "score_sigma", "score_topk", "map_level", "mask_tv", "mask_tv_until",
                        "restore_lam", "encoder_iterations", "encoder_n_init", "mask_channels")

#: What an unset field of :data:`PRIOR_DEFAULT_FIELDS` (``lam`` and ``restore_lam`` apart) is when the prior's
#: metadata has no value either: the paper's element-wise mask (no TV), one per pixel, and our pixel-exact map (read
#: as joined) and top-1 % score.
FALLBACKS: dict[str, Any] = {"map_sigma": 0.0, "score_topk": 0.01, "score_sigma": 1.0, "map_level": 0.5,
                             "mask_tv": 0.0, "mask_tv_until": 1.0, "mask_channels": "shared"}


def for_prior(config: InversionConfig, prior_defaults: dict[str, Any]) -> InversionConfig:
    """``config`` with each unset (``None``) field of :data:`FALLBACKS` taken from the prior's metadata, else the
    fallback. ``lam`` is taken from the metadata too but stays ``None`` without one (the solver then uses
    :data:`DEFAULT_LAMBDA`), as the config hashes of catalogs cleaned before this function existed were."""
    fields = {f.name for f in dataclasses.fields(config)}
    fill: dict[str, Any] = {}
    if config.triage is None:  # on where the prior has calibrated it
        fill["triage"] = (bool(prior_defaults.get("triage")) and bool(prior_defaults.get("fusion"))
                          or bool(prior_defaults.get("switch_triage")) or bool(prior_defaults.get("early_read")))
    if config.encoder is None:  # on where the prior carries one
        fill["encoder"] = bool(prior_defaults.get("encoder"))
    for k in PRIOR_DEFAULT_FIELDS:
        if k in fields and k not in config.declines_prior_fields and getattr(config, k) is None:
            v = prior_defaults.get(k)
            if v is None:
                v = FALLBACKS.get(k)
            if v is not None:
                fill[k] = v
    return dataclasses.replace(config, **fill) if fill else config


def config_for_prior(method: str, prior_defaults: dict[str, Any], **overrides: Any) -> InversionConfig:
    """``make_config`` with the prior's calibrated defaults (:data:`PRIOR_DEFAULT_FIELDS`) under the overrides.

    Precedence: explicit overrides (not ``None``) > the prior's metadata > :data:`FALLBACKS`.
    A default the method has no field for (``mask_tv`` for ``mse``) is skipped.
    """
    return for_prior(make_config(method, **{k: v for k, v in overrides.items() if v is not None}), prior_defaults)


def config_from_dict(d: dict[str, Any]) -> InversionConfig:
    """Inverse of :meth:`InversionConfig.to_dict`."""
    d = dict(d)
    return make_config(d.pop("method"), **d)
