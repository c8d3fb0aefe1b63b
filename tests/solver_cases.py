"""The solver's reference cases: every method and seam of ``invert`` on small seeded inputs, at most 50 steps.

``OMP_NUM_THREADS=1 python tests/solver_cases.py`` writes their outputs to ``tests/data/solver_golden.pt``;
``tests/test_solver_golden.py`` checks that ``invert`` still gives them within 1e-6. Both run with one OpenMP
thread: with two, some sums add up in another order and near-threshold masks move by ~1e-6. Regenerate the file only
when a change of results is intended, and say so in the commit message.

Bit-level references hold only on the float arithmetic that wrote them: torch picks its kernels by CPU (AVX2,
AVX-512, ...), and on a CPU with other kernels the same code gave outputs 0.01-0.2 apart after 50 steps. The file
therefore also stores :func:`canary`, a computation of the same kinds (convolutions, batch norm, Adam steps) in
plain torch, with none of rgi's code: where it differs, the machine's arithmetic differs from the reference's and
the test skips with that reason, instead of reporting the CPU as a regression.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "data" / "solver_golden.pt"
FIELDS = ("restored", "mask", "phi", "anomaly_map", "score", "generated", "latent")


CANARY = "_canary"


def canary() -> torch.Tensor:
    """Thirty Adam steps on the latent of a small seeded DCGAN-style net, in plain torch (no rgi code)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.ConvTranspose2d(16, 32, 4, 2, 1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Upsample(scale_factor=2.0), torch.nn.Conv2d(32, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(), torch.nn.Conv2d(16, 1, 3, padding=1), torch.nn.Tanh()).eval()
    target = torch.rand((4, 1, 32, 32)) * 2 - 1
    z = torch.randn((4, 16, 8, 8), requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(30):
        loss = ((net(z) - target) ** 2).mean() + 0.1 * (net(z) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach()


def _inputs():
    from conftest import generate, gross_flip

    from rgi_core.evaluation.toy import DEMO_SPEC
    from rgi_core.priors import load_prior, random_prior

    tiny = random_prior(DEMO_SPEC, seed=0)
    x = generate(tiny, 3, seed=1)
    y, _ = gross_flip(x, 0.10, seed=2)
    brick = load_prior("brick-64", device="cpu")
    g = torch.Generator().manual_seed(5)
    brick_y = torch.rand((2, 1, 64, 64), generator=g) * 0.3 + 0.35
    brick_y[:, :, 20:30, 20:30] = 1.0
    return tiny, y, brick, brick_y


def cases() -> dict[str, Callable[[], object]]:
    """Name -> a function that runs one solve and returns its ``InversionResult``."""
    from rgi_core import invert, make_config
    from rgi_core.inversion.operators import Downsample, Inpainting

    tiny, y, brick, brick_y = _inputs()
    small = dict(iterations=40, n_init=64, lam=0.1, device="cpu")
    holes = torch.ones(3, 1, 32, 32)
    holes[0, :, 4:12, 4:12] = 0
    holes[1, :, 10:20, 0:32:3] = 0
    holes[2, :, :, 16:] = 0
    down = torch.nn.functional.avg_pool2d(y, 2)
    return {
        "mse": lambda: invert(y, tiny, make_config("mse", **small)),
        "mse_latent_reg": lambda: invert(y, tiny, make_config("mse", latent_reg=0.05, **small)),
        "rgi": lambda: invert(y, tiny, make_config("rgi", **small)),
        "rgi_tv_adv_l1": lambda: invert(y, tiny, make_config("rgi", mask_tv=0.05, mask_tv_until=0.5, adv_weight=0.01,
                                                              fidelity="l1", **small)),
        "rgi_starts": lambda: invert(y, tiny, make_config("rgi", n_starts=3, start_iterations=5,
                                                          **(small | {"iterations": 30}))),
        "rrgi": lambda: invert(y, tiny, make_config("rrgi", lr_theta=1e-3, **small)),
        "rrgi_free_mask": lambda: invert(y, tiny, make_config("rrgi", freeze_mask=False, finetune_from=0.25,
                                                              lr_theta=1e-3, **small)),
        "dgp": lambda: invert(y, tiny, make_config("dgp", **small)),
        "rgi_inpainting": lambda: invert(y * holes, tiny, make_config("rgi", **small), Inpainting(holes)),
        "dgp_downsample": lambda: invert(down, tiny, make_config("dgp", **(small | {"iterations": 20})),
                                         Downsample(2)),
        "rgi_brick_detectors": lambda: invert(brick_y, brick, make_config("rgi", iterations=10, n_init=16,
                                                                          device="cpu")),
        "rrgi_brick_starts": lambda: invert(brick_y, brick, make_config("rrgi", iterations=10, n_init=16, n_starts=2,
                                                                        start_iterations=3, device="cpu")),
    }


def record(result) -> dict[str, object]:
    """The tensors and diagnostics of one result, as plain values."""
    out: dict[str, object] = {f: getattr(result, f).detach().clone() for f in FIELDS}
    out["diagnostics"] = [
        {"losses": dict(d.losses), "iterations": d.iterations, "converged": d.converged, "init_loss": d.init_loss,
         "error": d.error} for d in result.diagnostics]
    return out


def main(out: Path = GOLDEN) -> None:
    """Run every case with one torch thread and save the records to ``out``."""
    torch.set_num_threads(1)
    out.parent.mkdir(exist_ok=True)
    torch.save({CANARY: canary(), **{name: record(run()) for name, run in cases().items()}}, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN)
