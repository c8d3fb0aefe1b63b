"""How visible is each defect family at all? An oracle that is told where the defect is.

For every defect family (:mod:`rgi_core.evaluation.families`) on a texture's held-out quarter (the same test crops
as ``benchmarks/generalisation.py``), the oracle is given the true region R of each defective crop and compares
R with the rest of the crop by two plain statistics:

- **mean**: :math:`\\|\\bar x_R - \\bar x_{\\setminus R}\\|` (the mean colour, a vector on colour images), what a
  brightness or colour change moves;
- **contrast**: :math:`|\\log s_R - \\log s_{\\setminus R}|` (:math:`s` the standard deviation), what a fade,
  blur or grain moves.

The same statistics over the same regions of *clean* crops say how far a region of clean texture strays by itself.
Each statistic's image AUROC (defective crops against clean ones) is printed with its bootstrap interval. A
detector is not told where the defect is, so where both statistics stay low for a change of that kind (a
brightness or contrast change that stays inside what clean texture does by itself), no detector of rgi's kind is
expected to rank that family's images well: the closing note of a target that is out of reach cites these numbers.
The oracle sees only first and second moments: a family that changes structure (a warp) can be visible to
a detector and not to it, so a low oracle number there says nothing.

No generator runs; a texture takes seconds.

Usage:
    python benchmarks/visibility.py [--only brick grass gravel] [--n 48] [--clean-n 64]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from generalisation import CLEAN, family_set  # noqa: E402  the same crops as the leave-one-family-out tables

from rgi_core.detectors.selection import bootstrap_auroc  # noqa: E402
from rgi_core.evaluation.families import families_for  # noqa: E402
from rgi_core.io import builtin  # noqa: E402


def region_statistics(x: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|mean in - mean out|, |log std in - log std out|) per crop of x (N, C, H, W), region (N, 1, H, W) bool.
    The mean is per channel and the difference its Euclidean length over the channels (a colour cast or a hue turn
    moves the mean colour, not the mean grey level); the standard deviation pools the channels."""
    m = region.to(x.dtype).expand_as(x)

    def moments(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = w.sum((2, 3)).clamp_min(1.0)  # (N, C)
        mean = (x * w).sum((2, 3)) / n
        var = ((x - mean[:, :, None, None]) ** 2 * w).sum((1, 2, 3)) / n.sum(1)
        return mean, 0.5 * torch.log(var + 1e-8)

    (mean_in, log_in), (mean_out, log_out) = moments(m), moments(1.0 - m)
    return (mean_in - mean_out).norm(dim=1), (log_in - log_out).abs()


def visibility(texture: str, n: int, clean_n: int) -> dict[str, tuple[tuple[float, float, float], ...]]:
    """Per family: the bootstrap image AUROC (estimate, low, high) of the mean and of the contrast statistic."""
    clean, _ = family_set(texture, "test", CLEAN, clean_n)
    rows = {}
    for family in families_for(clean.shape[1]):
        x, truth = family_set(texture, "test", family, n)
        # each clean crop is read over the region of a defective crop (cycled when there are more clean crops)
        regions = truth[torch.arange(clean_n) % n]
        defect, normal = region_statistics(x, truth), region_statistics(clean, regions)
        rows[family] = tuple(bootstrap_auroc(c, d) for c, d in zip(normal, defect, strict=True))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=list(builtin.TEXTURES),
                    choices=[*builtin.TEXTURES, *builtin.COLOUR_TEXTURES])
    ap.add_argument("--n", type=int, default=48, help="defective crops per family")
    ap.add_argument("--clean-n", type=int, default=64, help="clean crops")
    args = ap.parse_args()
    print(f"# {platform.machine()}, torch {torch.__version__}; oracle told the true region; "
          f"{args.n} defective crops per family against {args.clean_n} clean, held-out quarter\n")
    for texture in args.only:
        print(f"**{texture}**\n\n| family | mean AUROC [95 % CI] | contrast AUROC [95 % CI] |\n|---|---|---|")
        for family, stats in visibility(texture, args.n, args.clean_n).items():
            cells = " | ".join(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in stats)
            print(f"| {family} | {cells} |", flush=True)
        print()


if __name__ == "__main__":
    main()
