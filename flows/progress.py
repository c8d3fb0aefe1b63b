"""Progress for interactive commands: a rich bar on a terminal, a plain line every few seconds otherwise.

A flow does not draw anything itself: it calls :func:`report` after each micro-batch, and whoever called it
in this process (``rgi clean``) may be listening through :func:`listening`. The listener is a context variable,
not a flow parameter, so runs started by a worker or a deployment carry no terminal concerns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

# (done, errors, total or None) -> None
Listener = Callable[[int, int, "int | None"], None]
_listener: ContextVar[Listener | None] = ContextVar("rgi_progress_listener", default=None)


def report(done: int, errors: int, total: int | None) -> None:
    """Tell the listener (if any) that ``done`` items are finished, ``errors`` of them failed."""
    fn = _listener.get()
    if fn is not None:
        fn(done, errors, total)


@contextmanager
def listening(fn: Listener) -> Iterator[None]:
    token = _listener.set(fn)
    try:
        yield
    finally:
        _listener.reset(token)


@contextmanager
def bar(description: str, unit: str = "images", stream: TextIO | None = None, every: float = 5.0,
        errors: bool = True) -> Iterator[Listener]:
    """A progress display for ``stream`` (stderr): a rich bar on a terminal, else a line every ``every`` s.

    Yields the listener to call as ``update(done, errors, total)``; ``errors=False`` hides the error count.
    """
    stream = stream or sys.stderr
    failed = "  {task.fields[errors]} errors" if errors else ""
    t0 = last = time.perf_counter()
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} {task.fields[unit]}/s" + failed), TimeElapsedColumn(),
                            console=Console(file=stream), transient=False)
        task = progress.add_task(description, total=None, rate="-", unit=unit, errors=0)

        def update(done: int, n_errors: int, total: int | None) -> None:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, completed=done, total=total, rate=f"{rate:.2f}", errors=n_errors)

        with progress:
            yield update
        return

    shown: list[str] = ["", ""]  # the latest line, the latest printed line

    def line(done: int, n_errors: int, total: int | None) -> None:
        nonlocal last
        now = time.perf_counter()
        of = f"/{total}" if total is not None else ""
        tail = f", {n_errors} errors" if errors else ""
        shown[0] = f"{description}: {done}{of} {unit}{tail}, {done / max(now - t0, 1e-9):.2f} {unit}/s"
        if now - last >= every:
            last = now
            print(shown[0], file=stream, flush=True)
            shown[1] = shown[0]

    yield line
    if shown[0] != shown[1]:  # the final count, once
        print(shown[0], file=stream, flush=True)
