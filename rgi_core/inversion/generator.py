"""G(z) as the solver calls it: shared weights, or one trainable copy of the weights per image."""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from rgi_core.priors.nets import Generator, to_unit

# On CPU, G runs on slices of at most this many output pixels (16 images of 64x64): its activations then
# stay in cache. Forward+backward cost 4.7 ms per image 16 at a time against 7.3 ms 64 at a time (2 cores).
# Each slice keeps its own autograd graph, so results do not depend on the slicing.
CPU_SLICE_PIXELS = 1 << 16


class GeneratorFn:
    """G(z) in [0, 1] with shared weights, or with per-image weights ``theta`` (stacked on dim 0)."""

    def __init__(self, generator: Generator, slice_images: int | None = None,
                 autocast: torch.dtype | None = None) -> None:
        self.module = generator.eval()
        self.slice_images = slice_images  # images per G call; None = the whole batch
        self.autocast = autocast  # run G under autocast to this dtype (bfloat16); None = its own precision
        self.params = {k: v.detach() for k, v in generator.named_parameters()}
        self.buffers = {k: v.detach() for k, v in generator.named_buffers()}
        self.theta: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_device(cls, generator: Generator, device: torch.device, height: int, width: int,
                   precision: str = "fp32") -> GeneratorFn:
        """Sliced on CPU (see :data:`CPU_SLICE_PIXELS`), whole batches elsewhere; ``precision`` ``"bf16"``: under
        bfloat16 autocast."""
        return cls(generator, max(1, CPU_SLICE_PIXELS // (height * width)) if device.type == "cpu" else None,
                   torch.bfloat16 if precision == "bf16" else None)

    def personalise(self, batch: int) -> dict[str, torch.Tensor]:
        """Give each of ``batch`` images its own trainable copy of the weights."""
        self.theta = {
            k: v.unsqueeze(0).repeat(batch, *([1] * v.ndim)).requires_grad_(True)
            for k, v in self.params.items()
        }
        return self.theta

    def _one(self, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        # Plain upsample+conv under vmap: with per-image weights the fused transposed conv becomes a grouped one,
        # 2x slower there on CPU (16 images, conv layers forward+backward: 21.3 vs 10.4 ms per image).
        return functional_call(self.module, (params, self.buffers), (z.unsqueeze(0),), {"fused": False}).squeeze(0)

    def _call(self, z: torch.Tensor, sl: slice, rows: torch.Tensor | None) -> torch.Tensor:
        if self.autocast is None:
            return self._run(z, sl, rows)
        with torch.autocast(z.device.type, dtype=self.autocast):
            out = self._run(z, sl, rows)
        return out.to(z.dtype)  # the loss and everything after G in the solve's own precision

    def _run(self, z: torch.Tensor, sl: slice, rows: torch.Tensor | None) -> torch.Tensor:
        if self.theta is None:
            return functional_call(self.module, (self.params, self.buffers), (z,))
        idx = sl if rows is None else rows[sl]
        return vmap(self._one)({k: v[idx] for k, v in self.theta.items()}, z)

    def __call__(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """z (B', *latent) -> (B', C, H, W) in [0, 1]. ``rows`` (B',): which images of the batch z's rows belong
        to (whose per-image weights they use); None = z is the whole batch."""
        n = self.slice_images or z.shape[0]
        if z.shape[0] <= n:
            return to_unit(self._call(z, slice(None), rows))
        return to_unit(torch.cat([self._call(z[s : s + n], slice(s, s + n), rows)
                                  for s in range(0, z.shape[0], n)]))

    def take(self, rows: torch.Tensor) -> GeneratorRows:
        """G for the images ``rows`` of the batch only (the images still optimising)."""
        return GeneratorRows(self, rows)


class GeneratorRows:
    """G(z) for some images of the batch: per-image weights are read at call time, so they follow the optimiser."""

    def __init__(self, gen: GeneratorFn, rows: torch.Tensor) -> None:
        self.gen, self.rows = gen, rows

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.gen(z, self.rows)
