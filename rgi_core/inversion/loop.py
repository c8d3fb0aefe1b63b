"""The one optimisation loop every method runs: Adam over parameter groups that are switched on and off by step.

Every parameter has the batch on dim 0 (z (B, *latent), M (B, 1, H', W'), per-image generator weights
(B, ...)), so one image's rows can be told apart from the others'. The loop has two seams:

- **cancellation**: :meth:`SolveControl.cancelled` is asked before every step; when it says so the loop
  raises :class:`Cancelled`, so a request is honoured within one step;
- **per-image stopping**: :meth:`SolveControl.image_done` may retire images after any step; their rows
  stay as they were from then on, whatever the others do, and the loss is evaluated on the other images only,
  so the batch shrinks. :class:`Plateau` is the adaptive stopping rule (``config.stop_tol``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rgi_core.stopping import Cancelled

__all__ = ["Cancelled", "Group", "Plateau", "SolveControl", "Trace", "either", "run_adam"]


@dataclass
class Group:
    """A parameter group of the shared Adam optimiser, active for steps in [start, stop).

    ``rate``: the learning rate at each step when it changes over the solve (DGP's stages), else ``lr`` throughout;
    ``betas``: Adam's betas for this group (None = torch's (0.9, 0.999))."""

    name: str
    params: list[torch.Tensor]
    lr: float
    start: int
    stop: int
    rate: Callable[[int], float] | None = None
    betas: tuple[float, float] | None = None

    def options(self) -> dict:
        """The group as a torch optimiser parameter group."""
        return {"params": self.params, "lr": self.lr, **({"betas": self.betas} if self.betas is not None else {})}


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

    def retire(self, done: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Hold the rows ``done`` marks (B,) from now on; returns those newly retired (B,) bool."""
        new = done if self.done is None else done & ~self.done
        if not bool(new.any()):
            return new
        self.done = done.clone() if self.done is None else self.done | done
        # Earlier retirees were restored after every step, so every retired row's current value is its held one.
        self.values = [(p, p.detach().clone()) for p in params]
        return new

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


@dataclass
class Plateau:
    """Adaptive stopping: an image is done once the best objective it has reached improved by less than ``tol``
    (relative) over the last ``window`` steps, checked from step ``start`` on (where the method's schedule has
    settled).

    The best-so-far value, not the current one: the RGI objective under Adam at the paper's rate of 0.1 moves
    up and down by more than its slow descent, so comparing the current value with the one ``window`` steps
    earlier fires on an upswing (on held-out brick crops it stopped images with 58 % more loss than their
    1000-step value, against 0.1 % for the best-so-far rule at the same window; docs/design.md).

    Called like :attr:`SolveControl.image_done`: ``(step, totals (B,)) -> done (B,) bool``.
    """

    window: int
    tol: float
    start: int = 0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")
        self._best: list[torch.Tensor] = []  # the running minimum at the last window + 1 steps

    def __call__(self, step: int, totals: torch.Tensor) -> torch.Tensor:
        best = totals if not self._best else torch.minimum(self._best[-1], totals)
        self._best = [*self._best[-self.window :], best]
        if step < self.start or len(self._best) <= self.window:
            return torch.zeros_like(totals, dtype=torch.bool)
        before = self._best[0]
        return (before - best) < self.tol * before.abs().clamp_min(1e-12)


DoneRule = Callable[[int, torch.Tensor], torch.Tensor]


def either(*rules: DoneRule | None) -> DoneRule | None:
    """An ``image_done`` rule that marks an image done when any of ``rules`` (None ones skipped) does."""
    live = [r for r in rules if r is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def done(step: int, totals: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(totals, dtype=torch.bool)
        for r in live:
            out |= r(step, totals).to(out.device)
        return out

    return done


@dataclass
class Trace:
    """What the loop did: the objective per step (list of (B,); a retired image keeps its last value) and the
    steps each image ran (B,)."""

    history: list[torch.Tensor]
    steps: torch.Tensor


def run_adam(groups: list[Group], steps: int, loss: Callable[[int, torch.Tensor | None], torch.Tensor], *,
             clamp: torch.Tensor | None, device: torch.device, control: SolveControl | None = None,
             per_image: bool = True, new_groups: Callable[[int], list[Group]] | None = None) -> Trace:
    """``steps`` Adam steps on ``groups`` minimising ``loss(step, rows)``; returns the :class:`Trace`.

    ``loss(step, rows)`` is the objective per image of the images ``rows`` (a 1-d index tensor; None = the whole
    batch), (len(rows),): once ``control.image_done`` retires images, only the others are evaluated, so a
    step costs less as the batch empties, and the loop ends when every image is done. ``clamp``: a parameter kept
    in [0, 1] after every step (the mask). ``new_groups(step)``: groups that join at ``step`` (per-image generator
    weights). ``per_image``: whether ``control.image_done`` applies (not to stacked multi-start copies).
    """
    # One fused kernel per step instead of ~10 elementwise passes: with per-image generator copies the
    # optimiser touches B x |theta| values a step, and the unfused Adam took 28 % of an rrgi solve on CPU.
    fused = True if device.type in ("cpu", "cuda") else None
    opt = torch.optim.Adam([g.options() for g in groups], fused=fused)
    pins, history = _Pins(), []
    active: torch.Tensor | None = None  # rows still optimising; None = all of them
    used = torch.full((groups[0].params[0].shape[0],), steps, dtype=torch.long)  # every parameter: batch on dim 0
    for step in range(steps):
        if control is not None:
            control.check()
        joined = new_groups(step) if new_groups is not None else []
        for g in joined:
            groups.append(g)
            opt.add_param_group(g.options())
            pins.add(g.params)
        if joined:
            pins.restore()  # the join hook may have touched every row (R-RGI's freeze of M)
        for g, options in zip(groups, opt.param_groups, strict=True):
            if g.rate is not None:
                options["lr"] = g.rate(step)
        total = loss(step, active)  # (B,) or (len(active),)
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
        full = total.detach() if active is None else history[-1].index_copy(0, active, total.detach())
        history.append(full)
        if per_image and control is not None and control.image_done is not None:
            new = pins.retire(control.image_done(step, full).to(full.device), [p for g in groups for p in g.params])
            if bool(new.any()):
                used[new.cpu()] = step + 1
                if bool(pins.done.all()):
                    break
                active = (~pins.done).nonzero().flatten()
    return Trace(history, used)
