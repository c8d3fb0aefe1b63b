"""Stop requests for rgi's long loops: the solver, training, calibration, the segmenter and evaluation.

Every long loop takes ``stop``: a callable asked between steps (``None``: never stop). When it returns
True the loop raises :class:`Cancelled` (or, for training, writes its checkpoint first), so a request is
honoured within one step. The callable is cheap to ask and never blocks; who sets it is the caller's
business: ``rgi``'s signal handlers (``flows/stopping.py``), a Prefect cancellation, a task timeout, or
your own :class:`threading.Event`::

    stop = threading.Event()
    invert(x, prior, config, control=SolveControl(cancelled=stop.is_set))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Asked between steps; True means "stop now".
StopCheck = Callable[[], bool]


class Cancelled(Exception):  # noqa: N818  the name says what happened, like asyncio.CancelledError
    """A long loop stopped on request before its last step."""


def check(stop: StopCheck | None, what: str = "stopped on request") -> None:
    """Raise :class:`Cancelled` (with ``what``) if ``stop`` says so."""
    if stop is not None and stop():
        raise Cancelled(what)


def either(*checks: StopCheck | None) -> StopCheck | None:
    """One check that is True when any of ``checks`` is (``None`` entries are left out)."""
    live = [c for c in checks if c is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    return lambda: any(c() for c in live)


class Throttled:
    """``check`` asked at most once per ``every`` seconds (for checks that cost a round trip); a True answer
    is remembered. A check that raises counts as "not stopped" (and is logged): a flaky channel must not
    fail the work it watches over."""

    def __init__(self, check: StopCheck, every: float = 0.5) -> None:
        self._check, self._every = check, every
        self._last = -float("inf")
        self._stopped = False
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        if self._stopped:
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._every:
                return False
            self._last = now
        try:
            self._stopped = bool(self._check())
        except Exception as exc:  # noqa: BLE001
            logger.warning("stop check failed (taken as not stopped): %s: %s", type(exc).__name__, exc)
        return self._stopped
