"""Typed containers returned by the solvers.

Every method (``mse``, ``rgi``, ``rrgi``, ``dgp``) returns the same :class:`InversionResult`, so the
pipeline, the metrics and the reports never need to know which method produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class ImageDiagnostics:
    """What one image's solve did.

    Attributes:
        losses: final value of every named loss term for this image (e.g. ``fidelity``, ``mask_l1``).
        iterations: optimisation steps run.
        converged: the total loss changed by less than ``config.converge_tol`` (relative) over the last
            10 % of the steps.
        init_loss: the best-of-N initial loss that selected the starting latent.
        error: empty when the solve is usable; otherwise why not (e.g. the loss diverged).
        triaged: the triage judged the image clean and no solve ran (:mod:`rgi_core.inversion.triage`): no
            losses, 0 iterations, not converged.
        restoration_skipped: the switch triage judged the image clean at the restoration stage's switch, or an
            early read at its step (:mod:`rgi_core.inversion.triage`): it stopped there, its restored image is the
            input.
        early_score: the image score at the early read, as the read compared it with its threshold (NaN where none
            was read: no early read in the prior, or the solve ended before it).
            Calibration reads it to fit the early read's threshold in the same solve as the switch's.
    """

    losses: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    converged: bool = False
    init_loss: float = float("nan")
    error: str = ""
    triaged: bool = False
    restoration_skipped: bool = False
    early_score: float = float("nan")

    @property
    def stage(self) -> str:
        """The path that produced the image's products, as the catalog's ``stage`` column says it: ``triage`` (no
        solve), ``detect`` (the solve's detection stage only, stopped at the restoration stage's switch or at an
        early read) or ``solve``."""
        return "triage" if self.triaged else "detect" if self.restoration_skipped else "solve"

    @property
    def final_loss(self) -> float:
        """Sum of the named terms at the last step."""
        return float(sum(self.losses.values()))


class InversionResult(NamedTuple):
    """The products of one batched solve. All images are in [0, 1].

    Attributes:
        restored: ``(B, C, H, W)`` BIGPrior fusion ``(1 - phi) * x + phi * generated``; the cleaned image.
        mask: ``(B, 1, H, W)`` in [0, 1], the corruption mask M (for ``mse``/``dgp``: the closed-form
            mask the RGI objective would pick for their fit, see :mod:`rgi_core.detectors.residual`).
        phi: ``(B, 1, H, W)`` in [0, 1], per-pixel reliance on the prior (1 = pixel taken from G).
        anomaly_map: ``(B, 1, H, W)`` in [0, 1), a soft, tie-free map of the (smoothed) residual,
            0.5 at the mask's residual threshold (see :mod:`rgi_core.detectors.residual`).
        score: ``(B,)`` image anomaly score, higher = more anomalous.
        generated: ``(B, C, H, W)`` the generator's output G(z) (after per-image fine-tuning for rrgi/dgp).
        latent: ``(B, *latent_shape)`` the final latent codes.
        diagnostics: one :class:`ImageDiagnostics` per image.
        detector_scores: each detector's own image score ``(B,)`` by name (``residual``, ``texture``,
            ``learned``: :mod:`rgi_core.detectors`), read from its map as the fused score reads it; only the
            detectors that ran (a triaged image has no ``residual``: NaN there).
        detector_surprise: with a prior's calibrated fusion, each detector's :math:`-\\log_{10} p` ``(B,)`` under its
            clean-data tail (:mod:`rgi_core.detectors.fusion`), by name; empty without one.
        detector_maps: each detector's own map ``(B, 1, H, W)`` by name, as it read the image before the fusion
            (NaN where it did not run: the residual of a triaged image).
    """

    restored: torch.Tensor
    mask: torch.Tensor
    phi: torch.Tensor
    anomaly_map: torch.Tensor
    score: torch.Tensor
    generated: torch.Tensor
    latent: torch.Tensor
    diagnostics: tuple[ImageDiagnostics, ...]
    detector_scores: Mapping[str, torch.Tensor] = MappingProxyType({})
    detector_surprise: Mapping[str, torch.Tensor] = MappingProxyType({})
    detector_maps: Mapping[str, torch.Tensor] = MappingProxyType({})

    def __len__(self) -> int:  # NamedTuple's len would count fields; a result's length is its batch size.
        return int(self.restored.shape[0])

    def select(self, index: int) -> InversionResult:
        """The result of image ``index`` as a batch of one."""
        sl = slice(index, index + 1)
        return InversionResult(
            restored=self.restored[sl],
            mask=self.mask[sl],
            phi=self.phi[sl],
            anomaly_map=self.anomaly_map[sl],
            score=self.score[sl],
            generated=self.generated[sl],
            latent=self.latent[sl],
            diagnostics=(self.diagnostics[index],),
            detector_scores={k: v[sl] for k, v in self.detector_scores.items()},
            detector_surprise={k: v[sl] for k, v in self.detector_surprise.items()},
            detector_maps={k: v[sl] for k, v in self.detector_maps.items()},
        )
