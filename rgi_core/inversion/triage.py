r"""Triage: the full solve only for images the cheap detectors find suspect.

Why. In dataset cleaning most images are clean, and confirming a clean image with thousands of solver steps is
the cost that matters most. The detectors that read the image itself (the texture statistics and the learned
segmenter, :mod:`rgi_core.detectors`) need no solve, and on held-out defects they rank images about as well as
the full fusion with the solve's residual (docs/design.md). So they sort the batch first.

What. The triage score of an image is the prior's calibrated fusion (:class:`rgi_core.detectors.fusion.Fusion`)
of those detectors alone, with the prior's context model (:mod:`rgi_core.detectors.context`) where it carries one,
which only the triage reads: :math:`-\log_{10} p` under clean data, the scale of the full score. An image whose
triage score is at most :attr:`Triage.threshold` is judged clean without a solve: it keeps its pixels (restored =
input, mask M = 0, phi = 0), its anomaly map and score are the triage ones, and its diagnostics say
``triaged``. The others get the full solve. The threshold is the ``1 - keep`` quantile of the triage score of
clean images (``keep``: the share of clean images still sent to the full solve), read by ``rgi calibrate
--into-prior`` with the fusion's tails on 512 clean crops of the fusion's held-out rows (``--triage-images``) and
stored in the prior's metadata (``defaults.triage``). No anomaly example picks it, so no defect family was tuned
for. Held out one defect family at a time, the shipped thresholds (keep 0.2) send away 0.9 % (brick, with its
context model), 0.3 % (grass) and none (gravel, with its context model) of the test crops the full score flags,
while 22 %, 33 % and 22 % of the clean ones are solved (``python benchmarks/triage_keep.py``, docs/design.md).

Optionally (``miss``, ``rgi calibrate --triage-miss``) the threshold is lowered further, to the ``miss`` quantile
of the triage score of the defective validation crops that the full score flags: at most that share of what the
full pipeline would flag on those crops is sent away unsolved. It costs solves, and no shipped prior uses it.

**At the restoration stage's switch** (:class:`SwitchTriage`). A prior with no detector that reads the image
(``digits-32``: its score is the residual's) cannot be triaged before a solve; but with a restoration stage
(``restore_lam``) its score is read at the stage's switch, so an image's final score is known there. An image whose
score at the switch is at most :attr:`SwitchTriage.threshold` stops there, judged clean: its score, anomaly map and
mask M are the solve's, its restoration is skipped (restored = input, phi = 0) and its diagnostics say
``restoration_skipped``. The threshold is the ``1 - keep`` quantile of that score over clean images solved as
``rgi clean`` solves them, and holds for the switch it was fitted at only (the score's scale depends on how long the
fit ran): a solve whose switch is elsewhere stops no image there. ``rgi calibrate --switch-triage-images N``
stores it (``defaults.switch_triage``); ``config.triage`` turns both triages on and off.

Most clean images are plain long before the switch. An **early read** (:class:`EarlyRead`, ``rgi calibrate
--switch-triage-early STEP``) scores the fit the same way after ``step`` steps of the same schedule: an image whose
score there is at most its threshold, the ``1 - keep`` quantile of the clean images' scores at that step, stops
there, judged clean as at the switch. Its z and M stay as they were at that step, so the score it is written with is
the one the read compared (a fit that ran fewer steps scores a little higher: the read errs toward going on).

**Without a restoration stage** (the texture priors) an early read stands on its own (``defaults.early_read``,
``rgi calibrate --early-read STEP``): an image the triage sent to the solve stops after ``step`` steps, judged
clean as above (restored = input, stage ``detect``), when its full fused score there is at most the threshold, the
``1 - keep`` quantile of that score over clean images solved as ``rgi clean`` solves them and never above the
prior's score threshold (an image the score flags is never judged clean). Half the clean crops the triage sends on
look plain to the residual within a third of brick's 300 steps: on brick's cost pool the read at step 100 stops 44
of 85 of them and none of the flagged defective crops (``benchmarks/early_read.py`` chose keep 0.2 on validation
families; docs/design.md). It holds for the start it was fitted on (the encoder's, or the search's alone) only:
another start reaches another fit by that step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rgi_core.detectors.fusion import Fusion

#: the share of clean images still sent to the full solve, unless the calibration is told otherwise
DEFAULT_KEEP = 0.2


@dataclass(frozen=True)
class Triage:
    """A prior's triage threshold (``defaults.triage``).

    Attributes:
        threshold: triage score (:math:`-\\log_{10} p`) above which an image gets the full solve.
        keep: the share of the clean calibration images above it.
        detectors: the detectors the triage score fuses (those that read the image itself).
        record: how it was obtained (images), for the metadata.
    """

    threshold: float
    keep: float
    detectors: tuple[str, ...]
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_keep(self.keep, "triage")
        if not self.detectors:
            raise ValueError("triage needs at least one detector that reads the image")

    @classmethod
    def fit(cls, fusion: Fusion, clean_maps: Mapping[str, torch.Tensor], keep: float = DEFAULT_KEEP,
            defective_maps: Mapping[str, torch.Tensor] | None = None, score_threshold: float | None = None,
            miss: float | None = None) -> Triage:
        """The threshold that sends a ``keep`` share of the clean images (their detector maps, (N, 1, H, W) by
        name) to the full solve.

        With ``miss``, ``defective_maps`` (every detector's maps of defective validation crops) and the prior's
        ``score_threshold``: no higher than the ``miss`` quantile of the triage score of the defective crops whose
        full fused score is over ``score_threshold`` (module docstring).
        """
        _check_keep(keep, "triage")
        maps = {k: v for k, v in clean_maps.items() if k != "residual" and k in fusion.tails}
        if not maps:
            raise ValueError(f"triage needs a detector that reads the image itself; the fusion has "
                             f"{sorted(fusion.tails)}")
        scores = fusion.surprises(maps)[0].double()
        threshold = _keep_quantile(scores, keep, "triage")
        record: dict[str, Any] = {"images": int(scores.shape[0])}
        if miss is not None:
            if not 0.0 <= miss < 1.0 or defective_maps is None or score_threshold is None:
                raise ValueError(f"a triage miss target needs 0 <= miss < 1 ({miss}), defective crops' maps and "
                                 "the score threshold")
            flagged = fusion.surprises(defective_maps)[0] > score_threshold
            triage = fusion.surprises({k: defective_maps[k] for k in maps})[0].double()[flagged]
            record |= {"keep_threshold": threshold, "miss": miss, "flagged": int(flagged.sum())}
            if triage.numel():
                record["miss_threshold"] = float(torch.quantile(triage, miss))
                threshold = min(threshold, record["miss_threshold"])
        return cls(threshold, keep, tuple(sorted(maps)), record)

    def scores(self, fusion: Fusion, maps: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The triage anomaly map (B, 1, H, W) and score (B,) from the detectors' maps."""
        missing = set(self.detectors) - set(maps)
        if missing:
            raise ValueError(f"triage needs the detectors {sorted(missing)}, which this solve does not run")
        return fusion.fuse({k: maps[k] for k in self.detectors})

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "keep": self.keep, "detectors": list(self.detectors),
                "record": self.record}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Triage:
        return cls(float(d["threshold"]), float(d["keep"]), tuple(d["detectors"]), dict(d.get("record", {})))


@dataclass(frozen=True)
class EarlyRead:
    """An earlier read of the score than the switch (module docstring): images whose score after ``step`` steps
    of the solve is at most ``threshold`` stop there.

    Attributes:
        step: the steps run before the read (fewer than the switch's).
        threshold: the image score after ``step`` steps above which an image goes on.
        keep: the share of the clean calibration images above it.
    """

    step: int
    threshold: float
    keep: float
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.step < 1:
            raise ValueError(f"an early read needs at least one step before it, got {self.step}")
        _check_keep(self.keep, "early read")

    @classmethod
    def fit(cls, scores: torch.Tensor, keep: float, step: int, ceiling: float = float("inf"),
            record: Mapping[str, Any] | None = None) -> EarlyRead:
        """The threshold that sends a ``keep`` share of clean images (their scores after ``step`` steps, (N,)) on,
        at most ``ceiling`` (a prior's score threshold: an image its score flags is never judged clean)."""
        return cls(int(step), min(_keep_quantile(scores, keep, "early read"), float(ceiling)), keep,
                   {"images": int(scores.numel()), **record} if record is not None else {})

    def applies(self, from_encoder: bool) -> bool:
        """Whether the read holds for a solve with this start (a read fitted without a record of its start, as
        ``digits-32``'s, holds for any)."""
        return bool(self.record.get("encoder", from_encoder)) == from_encoder

    def to_dict(self) -> dict[str, Any]:
        d = {"step": self.step, "threshold": self.threshold, "keep": self.keep}
        return {**d, "record": self.record} if self.record else d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EarlyRead:
        return cls(int(d["step"]), float(d["threshold"]), float(d["keep"]), dict(d.get("record", {})))


@dataclass(frozen=True)
class SwitchTriage:
    """A prior's threshold for stopping images judged clean at the restoration stage's switch
    (``defaults.switch_triage``; module docstring).

    Attributes:
        threshold: the image score at the switch above which an image goes on to the restoration stage.
        keep: the share of the clean calibration images above it.
        switch: the solve step it was fitted at (the first step of the restoration stage).
        record: how it was obtained (images, the solve's steps and candidates), for the metadata.
        early: an earlier read of the same solve (:class:`EarlyRead`), or None.
    """

    threshold: float
    keep: float
    switch: int
    record: dict[str, Any] = field(default_factory=dict)
    early: EarlyRead | None = None

    def __post_init__(self) -> None:
        _check_keep(self.keep, "switch triage")
        if self.switch < 1:
            raise ValueError(f"switch triage needs a restoration stage that starts at step >= 1, got {self.switch}")
        if self.early is not None and self.early.step >= self.switch:
            raise ValueError(f"an early read comes before the switch (step {self.switch}), got step {self.early.step}")

    @classmethod
    def fit(cls, scores: torch.Tensor, keep: float, switch: int, record: Mapping[str, Any] | None = None
            ) -> SwitchTriage:
        """The threshold that sends a ``keep`` share of clean images (their scores at the switch, (N,)) on to the
        restoration stage."""
        return cls(_keep_quantile(scores, keep, "switch triage"), keep, int(switch),
                   {"images": int(scores.numel()), **(record or {})})

    def to_dict(self) -> dict[str, Any]:
        early = {"early": self.early.to_dict()} if self.early is not None else {}
        return {"threshold": self.threshold, "keep": self.keep, "switch": self.switch, "record": self.record, **early}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SwitchTriage:
        e = d.get("early")
        return cls(float(d["threshold"]), float(d["keep"]), int(d["switch"]), dict(d.get("record", {})),
                   EarlyRead.from_dict(e) if e else None)


def _keep_quantile(scores: torch.Tensor, keep: float, what: str) -> float:
    """The score (a quantile of the clean images' scores (N,)) above which a ``keep`` share of them lies."""
    _check_keep(keep, what)
    if scores.numel() == 0:
        raise ValueError(f"{what} needs the scores of at least one clean image")
    return float(torch.quantile(scores.double(), 1.0 - keep))


def _check_keep(keep: float, what: str) -> None:
    """A share of clean images sent on (``what``'s ``keep``) is in (0, 1]."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"{what} keep must be in (0, 1], got {keep}")


def switch_triage_of(defaults: Mapping[str, Any]) -> SwitchTriage | None:
    """The switch triage stored in a prior's defaults, or None."""
    d = defaults.get("switch_triage")
    return SwitchTriage.from_dict(d) if d else None


def early_read_of(defaults: Mapping[str, Any]) -> EarlyRead | None:
    """The early read stored on its own in a prior's defaults (a prior without a restoration stage), or None; a
    switch triage's own early read is :attr:`SwitchTriage.early`."""
    d = defaults.get("early_read")
    return EarlyRead.from_dict(d) if d else None


def triage_of(defaults: Mapping[str, Any]) -> Triage | None:
    """The triage stored in a prior's defaults, or None (it needs the prior's fusion, so without one: None)."""
    d = defaults.get("triage")
    return Triage.from_dict(d) if d and defaults.get("fusion") else None
