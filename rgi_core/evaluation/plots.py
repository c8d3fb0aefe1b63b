"""Curve plots for evaluation reports (ROC, PRO) as PNG bytes.

matplotlib is imported lazily with the non-interactive Agg backend, so importing :mod:`rgi_core` stays
cheap and nothing needs a display. Curves come from :mod:`rgi_core.evaluation.metrics`; this module only draws.
"""

from __future__ import annotations

import io
import math

from torch import Tensor

#: One curve per method: ``(x, y)`` 1-D tensors, or empty tensors when the curve is undefined.
Curves = dict[str, tuple[Tensor, Tensor]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def curves_png(panels: list[tuple[str, str, str, Curves, dict[str, float]]], fpr_limit: float | None = None) -> bytes:
    """Side-by-side panels ``(title, xlabel, ylabel, curves, areas)``; areas label the legend (nan: "n/a").

    A panel whose curves are all empty says "n/a" (e.g. pixel curves without ground-truth masks).
    ``fpr_limit`` draws a dotted vertical line (PRO is integrated up to it).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, xlabel, ylabel, curves, areas) in zip(axes[0], panels, strict=True):
        drawn = False
        for method, (x, y) in curves.items():
            if x.numel() == 0:
                continue
            area = areas.get(method, float("nan"))
            ax.plot(x.numpy(), y.numpy(), label=f"{method} ({'n/a' if math.isnan(area) else f'{area:.3f}'})")
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        else:
            ax.legend(loc="lower right", fontsize=8)
        if fpr_limit is not None and "PRO" in title:
            ax.axvline(fpr_limit, color="gray", linestyle=":", linewidth=1)
        ax.plot([0, 1], [0, 1], color="lightgray", linewidth=0.8, zorder=0)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
