"""Device selection: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks ``cuda`` when available, then ``mps``, else ``cpu``; anything else is parsed."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


@contextmanager
def tf32(enabled: bool, device: str | torch.device | None = None) -> Iterator[None]:
    """Within the block, let CUDA float32 matrix products and convolutions use TensorFloat-32 when ``enabled``
    (and, given a ``device``, when it resolves to CUDA: elsewhere it means nothing); the process's own settings
    are restored after it (they are global, so the block changes nothing else)."""
    if not enabled or (device is not None and resolve_device(device).type != "cuda"):
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
