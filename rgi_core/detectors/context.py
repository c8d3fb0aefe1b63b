r"""A context model of the texture: a detector of pixels that do not follow from their surround, for the triage.

Why. The triage (:mod:`rgi_core.inversion.triage`) sorts images before any solve, with the detectors that read the
image itself. The texture statistics see pixels whose local statistics are rare and the segmenter the kinds of
anomaly it was trained on; neither sees a strip of the texture's own pixels pasted in the wrong place or texture
bent out of its structure (a cut-paste scar, a warp), which the full solve's residual does see. Held out one defect
family at a time on brick, a triage of those two detectors sent away 8 % of the defective crops the full pipeline
flags, most of them scars and warps; with this detector beside them, 1.5 % (docs/benchmarks.md).

What. :class:`ContextNet` is an MLP that sees a ``patch`` x ``patch`` window of an image with its central ``hole`` x
``hole`` pixels hidden and predicts each hidden pixel (every channel) as a Gaussian, mean and log variance. It is
trained by :func:`train_context` with the Gaussian negative log-likelihood on windows drawn from clean crops and
their mirror images. A context encoder in the sense of Pathak et al. (CVPR 2016), as a density model: a pixel that
its surround makes unlikely is anomalous, as in the patch-based density estimators of texture defect detection.

The map is each window position's mean NLL over its hidden pixels, placed at the hidden block's centre (the border
the window cannot reach repeats the nearest value), read like the segmenter's map:
:math:`a = G_\sigma(d / (d + t))` with :math:`d = e^{\text{NLL}}`, :math:`t` such that the ``quantile`` of clean
pixels reads 0.5 (clean crops the net was not trained on). A logistic function of the NLL, so rankings are the
NLL's.

It joins the triage score only, not the solved images' fused score: on validation crops with the solve's residual
beside it, it raised brick's and gravel's held-out mean image AUROC and lowered grass's (docs/history/design-log.md,
"A context inpainter as a fourth detector"), while in the triage, where it stands in for the residual that has not
been computed yet, it cut the held-out misses on every texture it was measured on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rgi_core.detectors.residual import NetMap, ratio_map, smoothed_quantile_threshold
from rgi_core.stopping import StopCheck, check


class ContextNet(nn.Module):
    """(N, C * (patch² - hole²)) surrounds, centred at 0 -> (N, 2 * C * hole²): the hidden pixels' means, then
    their log variances (channel-major, row-major within the hole)."""

    def __init__(self, channels: int = 1, patch: int = 13, hole: int = 5, width: int = 256) -> None:
        super().__init__()
        if patch <= hole or (patch - hole) % 2:
            raise ValueError(f"the hole ({hole}) must sit centred in the patch ({patch}) with context on every side")
        self.channels, self.patch, self.hole, self.width = channels, patch, hole, width
        inside = torch.zeros(patch, patch, dtype=torch.bool)
        lo = (patch - hole) // 2
        inside[lo : lo + hole, lo : lo + hole] = True
        inside = inside.flatten().repeat(channels)  # unfold's order: channel-major
        # which entries of a window (unfold's layout) the net sees and which it predicts; plain tensors, not state
        self.context_idx, self.hidden_idx = (~inside).nonzero()[:, 0], inside.nonzero()[:, 0]
        n_in, n_out = int((~inside).sum()), int(inside.sum())
        self.mlp = nn.Sequential(nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, width), nn.GELU(), nn.Linear(width, 2 * n_out))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.mlp(context)

    def nll(self, windows: torch.Tensor) -> torch.Tensor:
        """Windows (N, C * patch²) in [0, 1] (unfold's layout) -> each window's mean Gaussian NLL over its
        hidden pixels (N,), without the constant ½ ln 2π."""
        w = windows - 0.5
        seen, hidden = self.context_idx.to(w.device), self.hidden_idx.to(w.device)
        out = self(w[:, seen])
        k = hidden.numel()
        mean, log_var = out[:, :k], out[:, k:].clamp(-12.0, 4.0)
        return (0.5 * (log_var + (w[:, hidden] - mean) ** 2 / log_var.exp())).mean(1)

    def nll_map(self, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> the NLL (B, 1, H, W) of the hole centred at each pixel, the border the
        window cannot reach filled with its nearest value."""
        p = self.patch
        if x.shape[-2] < p or x.shape[-1] < p:
            raise ValueError(f"images must be at least {p} x {p} for the context map, got {tuple(x.shape[-2:])}")
        ref = next(self.parameters())
        out = []
        for s in range(0, x.shape[0], batch):
            xs = x[s : s + batch].to(ref)
            n, _, h, w = xs.shape
            windows = F.unfold(xs, p).transpose(1, 2).reshape(-1, self.channels * p * p)
            m = self.nll(windows).reshape(n, 1, h - p + 1, w - p + 1)
            out.append(F.pad(m, (p // 2,) * 4, mode="replicate").to(x))
        return torch.cat(out)


@dataclass(frozen=True)
class ContextConfig:
    """Training settings of :func:`train_context`."""

    patch: int = 13
    hole: int = 5
    width: int = 256
    steps: int = 2000
    batch: int = 2048
    lr: float = 1e-3
    seed: int = 0


def random_windows(clean: torch.Tensor, n: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` windows (n, C * patch²) in unfold's layout, each from a random crop of ``clean`` (N, C, H, W) at a
    random position, mirrored left-right with probability ½."""
    N, C, H, W = clean.shape
    i = torch.randint(N, (n,), generator=gen)
    y0 = torch.randint(H - patch + 1, (n,), generator=gen)
    x0 = torch.randint(W - patch + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    d = torch.arange(patch)
    ys = (y0[:, None] + d)[:, :, None].expand(n, patch, patch)
    xs = (x0[:, None] + d)[:, None, :].expand(n, patch, patch)
    xs = torch.where(flip[:, None, None], xs.flip(-1), xs)
    win = clean[i[:, None, None], :, ys, xs]  # (n, patch, patch, C)
    return win.permute(0, 3, 1, 2).reshape(n, C * patch * patch)


def train_context(clean: torch.Tensor, config: ContextConfig = ContextConfig(),
                  log: Callable[[int, float], None] | None = None, device: str | torch.device = "cpu",
                  stop: StopCheck | None = None) -> ContextNet:
    """Train on clean crops (N, C, H, W) in [0, 1]; returns the net on ``device`` in eval mode. ``stop`` is asked
    before every step and ends training with :class:`rgi_core.stopping.Cancelled`."""
    if clean.ndim != 4 or clean.shape[-1] < config.patch or clean.shape[-2] < config.patch:
        raise ValueError(f"need clean crops (N, C, H, W) of at least {config.patch} px, got {tuple(clean.shape)}")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    clean = clean.detach().to("cpu", torch.float32)
    net = ContextNet(clean.shape[1], config.patch, config.hole, config.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    net.train()
    for step in range(config.steps):
        check(stop, f"context model training stopped at step {step} of {config.steps}")
        loss = net.nll(random_windows(clean, config.batch, config.patch, gen).to(device)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 250 == 0 or step == config.steps - 1):
            log(step, float(loss.detach()))
    return net.eval().requires_grad_(False)


def _density(nll: torch.Tensor) -> torch.Tensor:
    """:math:`d = e^{\\text{NLL}}`, the NLL capped at 60 so that d stays finite in float32 (the map reads 1 there)."""
    return nll.clamp(max=60.0).exp()


@dataclass(frozen=True)
class ContextMap(NetMap):
    """A trained :class:`ContextNet` with the threshold that makes its map read like the other detectors'
    (:class:`~rgi_core.detectors.residual.NetMap`; ``training``: steps, crops, seed, seconds, final NLL)."""

    net: ContextNet

    @classmethod
    def fit(cls, clean: torch.Tensor, held_out: torch.Tensor, config: ContextConfig = ContextConfig(),
            smooth: float = 2.0, quantile: float = 0.995, log: Callable[[int, float], None] | None = None,
            device: str | torch.device = "cpu", stop: StopCheck | None = None) -> ContextMap:
        """Train on clean crops (N, C, H, W) and set the threshold on other clean crops ``held_out``."""
        t0 = time.perf_counter()
        losses: list[float] = []

        def record(step: int, loss: float) -> None:
            losses.append(loss)
            if log is not None:
                log(step, loss)

        net = train_context(clean, config, record, device, stop)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            d = _density(net.nll_map(held_out.detach().to("cpu", torch.float32)).cpu())
        threshold = smoothed_quantile_threshold(d, smooth, quantile)
        training = {"steps": config.steps, "batch": config.batch, "lr": config.lr, "seed": config.seed,
                    "crops": int(clean.shape[0]), "held_out": int(held_out.shape[0]),
                    "seconds": round(seconds, 1), "final_nll": round(losses[-1], 4) if losses else None,
                    "recipe": "context inpainter, Gaussian NLL of the hidden pixels (rgi_core.detectors.context)"}
        return cls(net, threshold, smooth, quantile, training)

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`G_\\sigma(d / (d + t))`, :math:`d = e^{\\text{NLL}}`, in [0, 1), 0.5 at the clean quantile:
        (B, C, H, W) -> (B, 1, H, W)."""
        return ratio_map(_density(self.net.nll_map(x)), self.threshold, self.smooth)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for a prior's metadata (``defaults.context``); the weights are tensors of the file."""
        n = self.net
        return {"channels": n.channels, "patch": n.patch, "hole": n.hole, "width": n.width,
                "threshold": self.threshold, "smooth": self.smooth, "quantile": self.quantile,
                "training": self.training}

    @classmethod
    def from_parts(cls, d: dict[str, Any], state: dict[str, torch.Tensor]) -> ContextMap:
        """Rebuild from ``defaults.context`` and the ``context.*`` tensors (prefix stripped)."""
        try:
            net = ContextNet(int(d["channels"]), int(d["patch"]), int(d["hole"]), int(d["width"]))
            net.load_state_dict(state, strict=True)
            return cls(net.eval().requires_grad_(False), float(d["threshold"]), float(d.get("smooth", 2.0)),
                       float(d.get("quantile", 0.995)), dict(d.get("training", {})))
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"context metadata and tensors do not match: {e}") from e
