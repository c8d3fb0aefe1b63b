"""The one optimisation loop every method runs: Adam over parameter groups that are switched on and off by step.

Every parameter has the batch on dim 0 (z (B, *latent), M (B, 1, H', W'), per-image generator weights
(B, ...)), so one image's rows can be told apart from the others'. The loop has two seams:

- **cancellation**: :meth:`SolveControl.cancelled` is asked before every step; when it says so the loop
  raises :class:`Cancelled`, so a request is honoured within one step;
- **per-image stopping**: :meth:`SolveControl.image_done` may retire images after any step; their rows
  stay as they were from then on, whatever the others do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rgi_core.stopping import Cancelled

__all__ = ["Cancelled", "Group", "SolveControl", "run_adam"]


@dataclass
class Group:
    """A parameter group of the shared Adam optimiser, active for steps in [start, stop)."""

    name: str
    params: list[torch.Tensor]
    lr: float
    start: int
    stop: int


@dataclass
class SolveControl:
    """Hooks a caller gives :func:`rgi_core.inversion.solver.invert` to steer a running solve.

    Attributes:
        cancelled: asked before every step; True stops the solve with :class:`Cancelled`.
        image_done: ``(step, totals (B,)) -> done (B,) bool`` after every step; an image marked done keeps
            its parameters from then on (it has left the batch). Marks are never taken back.
    """

    cancelled: Callable[[], bool] | None = None
    image_done: Callable[[int, torch.Tensor], torch.Tensor] | None = None

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("solve cancelled")


class _Pins:
    """Rows of retired images, held at their values from the step they left."""

    def __init__(self) -> None:
        self.done: torch.Tensor | None = None  # (B,) bool
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []  # (param, its rows at retirement)

    def retire(self, done: torch.Tensor, params: list[torch.Tensor]) -> None:
        new = done if self.done is None else done & ~self.done
        if not bool(new.any()):
            return
        self.done = done.clone() if self.done is None else self.done | done
        # Earlier retirees were restored after every step, so every retired row's current value is its held one.
        self.values = [(p, p.detach().clone()) for p in params]

    def add(self, params: list[torch.Tensor]) -> None:
        """Parameters created after some images retired: those rows are held at their initial values."""
        if self.done is not None:
            self.values += [(p, p.detach().clone()) for p in params]

    @torch.no_grad()
    def restore(self) -> None:
        if self.done is None:
            return
        for p, held in self.values:
            p[self.done] = held[self.done]


def run_adam(groups: list[Group], steps: int, loss: Callable[[int], torch.Tensor], *, clamp: torch.Tensor | None,
             device: torch.device, control: SolveControl | None = None, per_image: bool = True,
             new_groups: Callable[[int], list[Group]] | None = None) -> list[torch.Tensor]:
    """``steps`` Adam steps on ``groups`` minimising ``loss(step)`` (per image, (B,)); returns the losses per step.

    ``clamp``: a parameter kept in [0, 1] after every step (the mask). ``new_groups(step)``: groups that join
    at ``step`` (per-image generator weights). ``per_image``: whether ``control.image_done`` applies (not
    to stacked multi-start copies).
    """
    # One fused kernel per step instead of ~10 elementwise passes: with per-image generator copies the
    # optimiser touches B x |theta| values a step, and the unfused Adam took 28 % of an rrgi solve on CPU.
    fused = True if device.type in ("cpu", "cuda") else None
    opt = torch.optim.Adam([{"params": g.params, "lr": g.lr} for g in groups], fused=fused)
    pins, history = _Pins(), []
    for step in range(steps):
        if control is not None:
            control.check()
        joined = new_groups(step) if new_groups is not None else []
        for g in joined:
            groups.append(g)
            opt.add_param_group({"params": g.params, "lr": g.lr})
            pins.add(g.params)
        if joined:
            pins.restore()  # the join hook may have touched every row (R-RGI's freeze of M)
        total = loss(step)  # (B,)
        total.sum().backward()
        for g in groups:
            if not g.start <= step < g.stop:
                for p in g.params:
                    p.grad = None
        opt.step()
        opt.zero_grad(set_to_none=True)
        pins.restore()
        if clamp is not None:
            with torch.no_grad():
                clamp.clamp_(0.0, 1.0)
        history.append(total.detach())
        if per_image and control is not None and control.image_done is not None:
            done = control.image_done(step, total.detach()).to(total.device)
            pins.retire(done, [p for g in groups for p in g.params])
    return history
