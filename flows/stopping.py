"""Stopping a run when asked: signals, a Prefect cancellation, a timeout, the flow ending early.

Where a request comes from, and what it does:

- **the process** (``rgi``'s signal handlers, :func:`cli_signals`): the first SIGINT or SIGTERM calls
  :func:`request_stop`; every run and long loop in the process stops within a step. A second signal
  stops every child process ``rgi`` started (the temporary Prefect server, Dask workers) and exits at once.
- **the Prefect API** (UI, ``prefect flow-run cancel``): while a ``clean-dataset`` run is going, a watcher
  thread (:func:`run_stop`) reads its state every second; Cancelling or Cancelled stops the run.
- **the flow ending early** (an exception, Prefect's TerminationSignal on SIGTERM from a worker): the run's
  stop is set on the way out, so the running solve ends within a step instead of holding the process.

A run's solves ask one :class:`StopRef`: in the flow's process it reads the run's event; on a Dask worker
(another process) it reads a ``distributed.Event`` named after the run, at most twice a second.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rgi_core.stopping import StopCheck, Throttled

logger = logging.getLogger(__name__)

_PROCESS = threading.Event()  # set by request_stop: everything in this process stops
_REASON: list[str] = []
_RUNS: dict[str, threading.Event] = {}  # run_id -> that run's stop, in the flow's process
API_POLL_SECONDS = 1.0


def request_stop(reason: str) -> None:
    """Ask every run and long loop in this process to stop (what the first Ctrl-C does)."""
    if not _PROCESS.is_set():
        _REASON.append(reason)
    _PROCESS.set()


def stop_requested() -> bool:
    """True once :func:`request_stop` was called in this process."""
    return _PROCESS.is_set()


def stop_reason() -> str | None:
    """What the first :func:`request_stop` said, or None."""
    return _REASON[0] if _REASON else None


def _reset() -> None:
    """Forget a process-wide request (for a process that goes on after a stopped command, and tests)."""
    _PROCESS.clear()
    _REASON.clear()


def _event_name(run_id: str) -> str:
    return f"rgi-stop-{run_id}"


@dataclass(frozen=True)
class StopRef:
    """A run's stop, as its tasks see it: picklable, so it travels to Dask workers with each batch."""

    run_id: str
    dask: bool = False  # the run's tasks run on Dask workers: ask the run's distributed.Event there

    def check(self) -> StopCheck:
        """A cheap callable for the solver (asked every step, from any thread of this process).

        Build it in the task's thread: on a Dask worker it binds the worker's client there.
        """
        run = _RUNS.get(self.run_id)
        if run is not None:  # the flow's own process
            return lambda: _PROCESS.is_set() or run.is_set()
        if not self.dask:
            return _PROCESS.is_set
        import distributed

        try:  # the worker's client, found from this task thread (not from the solver's)
            event = distributed.Event(_event_name(self.run_id), client=distributed.get_client())
        except ValueError as exc:
            logger.warning("run %s: no Dask client here, only this process's stop is seen: %s", self.run_id, exc)
            return _PROCESS.is_set
        remote = Throttled(event.is_set, every=0.5)
        return lambda: _PROCESS.is_set() or remote()


class RunStop:
    """The stop of one run in the flow's process (see :func:`run_stop`)."""

    def __init__(self, run_id: str, dask_client: Any | None) -> None:
        self.ref = StopRef(run_id, dask=dask_client is not None)
        self.event = threading.Event()
        self.reasons: list[str] = []
        self.requested_at: float | None = None  # monotonic time the stop was first seen
        self._client = dask_client

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reasons.append(reason)
            logger.warning("stopping run %s: %s", self.ref.run_id, reason)
        self.event.set()
        if self._client is not None:
            try:
                import distributed

                distributed.Event(_event_name(self.ref.run_id), client=self._client).set()
            except Exception as exc:  # noqa: BLE001  a closed cluster has no solves left to stop
                logger.debug("could not signal the Dask workers of run %s: %s", self.ref.run_id, exc)

    def requested(self) -> bool:
        """True once this run, or the whole process, was asked to stop."""
        asked = self.event.is_set() or _PROCESS.is_set()
        if asked and self.requested_at is None:
            self.requested_at = time.monotonic()
        return asked

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else (stop_reason() or "stop requested")


@contextlib.contextmanager
def run_stop(run_id: str, flow_run_id: Any | None = None, dask_client: Any | None = None) -> Iterator[RunStop]:
    """The stop of a run for the duration of the block.

    ``flow_run_id``: watch this Prefect flow run's state and stop when it is Cancelling/Cancelled.
    ``dask_client``: also signal the run's Dask workers. Leaving the block by an exception sets the stop
    (solves still running end within a step); a clean exit leaves it as it is.
    """
    stop = RunStop(run_id, dask_client)
    _RUNS[run_id] = stop.event
    done = threading.Event()
    watcher = None
    if flow_run_id is not None:
        watcher = threading.Thread(target=_watch_api, args=(flow_run_id, stop, done), daemon=True,
                                   name=f"rgi-cancel-watch-{run_id[:8]}")
        watcher.start()
    if dask_client is not None:  # in this process the solves read the process-wide stop themselves
        threading.Thread(target=_forward_process_stop, args=(stop, done), daemon=True).start()
    try:
        yield stop
    except BaseException:
        stop.set("the run ended early")
        raise
    finally:
        done.set()
        if not stop.event.is_set():  # a stopped run stays known: a task that starts late must still see the stop
            _RUNS.pop(run_id, None)


def _forward_process_stop(stop: RunStop, done: threading.Event) -> None:
    """A process-wide request also reaches this run's Dask workers."""
    while not done.wait(0.2):
        if _PROCESS.is_set():
            stop.set(stop_reason() or "stop requested")
            return


def _watch_api(flow_run_id: Any, stop: RunStop, done: threading.Event) -> None:
    """Poll the flow run's state; Cancelling/Cancelled (the UI, ``prefect flow-run cancel``) stops the run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not done.wait(API_POLL_SECONDS):
            try:
                state = client.read_flow_run(flow_run_id).state
            except Exception as exc:  # noqa: BLE001  a flaky API must not end the run
                logger.debug("could not read the state of flow run %s: %s", flow_run_id, exc)
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                stop.set("cancelled through the Prefect API")
                return


# -- the command line --------------------------------------------------------------------------------------

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_CLI_HANDLER: list[Callable[..., None]] = []  # the handler of the command being run, if any


@contextlib.contextmanager
def cli_signals(say: Callable[[str], None] | None = None) -> Iterator[Callable[[], int | None]]:
    """SIGINT/SIGTERM handling for a command: the first signal asks for a clean stop, a second exits at once.

    Yields a function that returns the exit code the signal calls for (130 SIGINT, 143 SIGTERM), or None
    when no signal came. Outside the main thread (a command run from a library) it changes nothing.
    """
    received: list[int] = []
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        name = signal.Signals(signum).name
        if received:
            say(f"rgi: {name} again: exiting now")
            kill_children()
            os._exit(EXIT_CODES.get(signum, 128 + signum))
        received.append(signum)
        say(f"rgi: {name}: stopping after the current step ({name} again to exit at once)")
        request_stop(name)

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    _CLI_HANDLER.append(handler)
    try:
        yield lambda: EXIT_CODES.get(received[0], 128 + received[0]) if received else None
    finally:
        _CLI_HANDLER.remove(handler)
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def cli_sigterm() -> Iterator[None]:
    """Inside a flow run started by an ``rgi`` command: SIGTERM stays the command's clean stop.

    Prefect's engine turns SIGTERM into a TerminationSignal that crashes the run (what a worker's process
    should do); a user's ``kill`` of ``rgi clean`` asks for the same clean stop as Ctrl-C. Elsewhere (a
    worker, a library call, a thread other than the main one) nothing changes.
    """
    if not _CLI_HANDLER or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _CLI_HANDLER[-1])
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def kill_children() -> None:
    """Kill every process this one started, and theirs (the temporary Prefect server, Dask workers)."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)


def own_temporary_server() -> None:
    """Make Prefect's temporary server (used when no ``PREFECT_API_URL`` is set) start in a session of its own.

    A terminal's Ctrl-C reaches every process of the foreground group: the temporary server would shut down
    at the first one, and the run could no longer record its Cancelled state. In its own session it stops
    when this process exits (Prefect's exit hook, after the last logs are sent) or when
    :func:`kill_children` kills it. It still starts on the first Prefect client; with an API URL set, or
    once a client has started it, nothing changes.
    """
    from prefect.server.api import server
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or None in server.SubprocessASGIServer._instances:  # noqa: SLF001
        return

    class OwnSessionServer(server.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> Any:
            popen = server.subprocess.Popen
            server.subprocess.Popen = functools.partial(popen, start_new_session=True)  # type: ignore[misc]
            try:
                return super()._run_uvicorn_command()
            finally:
                server.subprocess.Popen = popen  # type: ignore[misc]

    OwnSessionServer()  # the singleton Prefect's client starts on first use
