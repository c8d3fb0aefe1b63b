"""A context inpainter as a fourth detector: the probe behind the design log's entry of that name.

A structural model of the texture that reads the input only: an MLP sees a 13 x 13 patch with its central 5 x 5
hidden and predicts those 25 pixels as Gaussians (mean, log variance), trained by the Gaussian negative
log-likelihood on the segmenter's training crops (1024 crops of rows y < 384 of the training split, and their
mirror images). Its map is each position's mean NLL over the hidden pixels (``--map nll``) or the mean standardised
error z^2 = (t - mu)^2 / v (``--map z2``), blurred by sigma 2; the image score the mean of the top 1 %, as for the
shipped detectors.

On the validation rows only (``val`` + ``val2`` of ``benchmarks/generalisation.py``: 48 crops per family, 128
clean), every crop is solved at the prior's CLI defaults for the residual map, and the four detectors' image scores
are joined by Fisher's rule over empirical clean tails fitted on ``val``'s clean crops. For each family the
inpainter joins the other three if the four-way mean over ``val``'s other 13 families is at least the three-way's;
the family is scored on ``val2``. Prints each detector alone, and the three-way and chosen fused scores per family.

Stages are cached under ``--out`` (the shipped detectors' scores, solved once for both maps; the net; the
inpainter's scores per map), so an interrupted run goes on where it stopped and ``--map z2`` after ``--map nll``
costs seconds. Per texture about 80 s of training and 8-14 minutes of solves on one core.

Usage:
    python benchmarks/inpainter.py [--only brick grass gravel] [--map nll|z2] [--steps 2000] [--out runs/inpainter]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from generalisation import CLEAN, VAL_ROWS, family_set  # noqa: E402  the same crops as the tables

from rgi_core.calibration import detector_maps_of  # noqa: E402
from rgi_core.detectors.residual import gaussian_blur, image_score  # noqa: E402
from rgi_core.evaluation.families import families_for  # noqa: E402
from rgi_core.evaluation.labelled import random_crops  # noqa: E402
from rgi_core.evaluation.metrics import image_auroc  # noqa: E402
from rgi_core.inversion.config import config_for_prior  # noqa: E402
from rgi_core.io import builtin  # noqa: E402
from rgi_core.priors import load_prior  # noqa: E402

PATCH, HOLE = 13, 5
_LO = (PATCH - HOLE) // 2
_HOLE_MASK = torch.zeros(PATCH, PATCH, dtype=torch.bool)
_HOLE_MASK[_LO : _LO + HOLE, _LO : _LO + HOLE] = True
CONTEXT, HIDDEN = (~_HOLE_MASK).flatten().nonzero()[:, 0], _HOLE_MASK.flatten().nonzero()[:, 0]
DETECTORS = ("residual", "texture", "learned", "inpaint")


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(len(CONTEXT), 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(),
                         nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 2 * HOLE * HOLE))


def predict(net: nn.Module, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """patches (N, PATCH * PATCH) -> (hidden pixels, predicted means, log variances), each (N, HOLE * HOLE)."""
    out = net(patches[:, CONTEXT] - 0.5)
    return patches[:, HIDDEN] - 0.5, out[:, : HOLE * HOLE], out[:, HOLE * HOLE :].clamp(-12, 4)


def train(region: torch.Tensor, steps: int) -> nn.Sequential:
    """Gaussian NLL on every patch of the segmenter's 1024 training crops and their mirror images."""
    crops = random_crops(region, 1024, 64, 5000)
    patches = F.unfold(crops, PATCH).transpose(1, 2).reshape(-1, PATCH * PATCH)
    patches = torch.cat([patches, patches.reshape(-1, PATCH, PATCH).flip(-1).reshape(-1, PATCH * PATCH)])
    net, gen = make_net(), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        t, mu, logv = predict(net, patches[torch.randint(len(patches), (2048,), generator=gen)])
        loss = (0.5 * (logv + (t - mu) ** 2 / logv.exp())).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"  step {step}: NLL {float(loss.detach()):.4f}", flush=True)
    return net.eval()


@torch.no_grad()
def inpaint_map(net: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, 1, H, W) crops -> (N, 1, H, W) map: per valid position the hidden pixels' mean NLL or z^2, padded by
    replication to the crop's size and blurred by sigma 2."""
    n, _, h, w = x.shape
    t, mu, logv = predict(net, F.unfold(x.float(), PATCH).transpose(1, 2).reshape(-1, PATCH * PATCH))
    z2 = (t - mu) ** 2 / logv.exp()
    per = (z2 if kind == "z2" else 0.5 * (logv + z2)).mean(1)
    m = per.reshape(n, 1, h - PATCH + 1, w - PATCH + 1)
    return gaussian_blur(F.pad(m, (_LO + HOLE // 2,) * 4, mode="replicate"), 2.0)


def _load_net(net_file: Path, region: torch.Tensor, steps: int) -> nn.Sequential:
    if net_file.exists():
        net = make_net()
        net.load_state_dict(torch.load(net_file))
        return net.eval()
    print(f"{net_file.stem}: training the inpainter", flush=True)
    net = train(region, steps)
    torch.save(net.state_dict(), net_file)
    return net


def _cached(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    scores = compute()
    np.savez(path, **scores)
    return scores


def _crops(texture: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(``split/family``, crops) of val and val2: 64 clean crops and 24 of each family per split."""
    for split in ("val", "val2"):
        for family in (CLEAN, *families_for(1)):
            yield f"{split}/{family}", family_set(texture, split, family, 64 if family == CLEAN else 24)[0]


def scores_of(texture: str, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Image scores ``{split/family/detector: (n,)}`` of val and val2, cached under --out: the shipped
    detectors' (the slow part, a solve per crop) once for both maps, the inpainter's once per map."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def shipped() -> dict[str, np.ndarray]:
        prior = load_prior(f"{texture}-64", device="cpu")
        cfg = config_for_prior("rgi", prior.defaults, device="cpu")
        scores = {}
        for key, x in _crops(texture):
            for name, m in detector_maps_of(prior, x, cfg).items():
                scores[f"{key}/{name}"] = image_score(m.float(), 0.01).numpy()
            print(f"{texture}: {key} solved", flush=True)
        return scores

    def inpainter() -> dict[str, np.ndarray]:
        region = torch.from_numpy(builtin.texture(texture, "train"))[:, :VAL_ROWS]
        net = _load_net(out / f"{texture}-net.pt", region, args.steps)
        return {f"{key}/inpaint": image_score(inpaint_map(net, x, args.map), 0.01).numpy()
                for key, x in _crops(texture)}

    return _cached(out / f"{texture}-detectors.npz", shipped) | _cached(out / f"{texture}-{args.map}.npz", inpainter)


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Image AUROC of defective scores ``pos`` against clean scores ``neg``."""
    return image_auroc(torch.from_numpy(np.r_[neg, pos]), torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]))


def report(texture: str, s: dict[str, np.ndarray]) -> None:
    families = families_for(1)
    tails = {d: s[f"val/{CLEAN}/{d}"] for d in DETECTORS}

    def fisher(split: str, family: str, use: tuple[str, ...]) -> np.ndarray:
        v = [s[f"{split}/{family}/{d}"] for d in use]  # p = (1 + #clean >= v) / (n + 1), empirical tails on val
        return -sum(np.log((1 + (tails[d][None] >= x[:, None]).sum(1)) / (len(tails[d]) + 1)) for d, x in
                    zip(use, v, strict=True))

    def auc(split: str, family: str, use: tuple[str, ...]) -> float:
        return _auroc(fisher(split, CLEAN, use), fisher(split, family, use))

    three, four = DETECTORS[:3], DETECTORS
    val = {use: {f: auc("val", f, use) for f in families} for use in (three, four)}
    print(f"\n{texture}: image AUROC per family; each detector alone on val + val2, fused on val2")
    print("| family | " + " | ".join(DETECTORS) + " | three-way | with the inpainter if val chose it |")
    print("|---|" + "---|" * (len(DETECTORS) + 2))
    rows = {"three": [], "chosen": [], **{d: [] for d in DETECTORS}}
    for f in families:
        alone = {d: _auroc(np.r_[s[f"val/{CLEAN}/{d}"], s[f"val2/{CLEAN}/{d}"]],
                           np.r_[s[f"val/{f}/{d}"], s[f"val2/{f}/{d}"]]) for d in DETECTORS}
        for d in DETECTORS:
            rows[d].append(alone[d])
        others = [g for g in families if g != f]
        include = np.mean([val[four][g] for g in others]) >= np.mean([val[three][g] for g in others])
        rows["three"].append(auc("val2", f, three))
        rows["chosen"].append(auc("val2", f, four if include else three))
        print(f"| {f} | " + " | ".join(f"{alone[d]:.3f}" for d in DETECTORS)
              + f" | {rows['three'][-1]:.3f} | {rows['chosen'][-1]:.3f}{'' if include else ' (left out)'} |")
    print("| mean | " + " | ".join(f"{np.mean(rows[k]):.3f}" for k in (*DETECTORS, "three", "chosen")) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", default=["brick", "grass", "gravel"], choices=builtin.TEXTURES)
    p.add_argument("--map", choices=("nll", "z2"), default="nll")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", default="runs/inpainter")
    args = p.parse_args()
    torch.set_num_threads(1)
    for texture in args.only:
        report(texture, scores_of(texture, args))


if __name__ == "__main__":
    main()
