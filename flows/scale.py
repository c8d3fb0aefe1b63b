"""Scale-out for ``clean-dataset``: run the inversion tasks on a Dask cluster instead of the flow's thread pool.

``CleanOptions(task_runner="dask")`` picks :func:`dask_task_runner`: a temporary ``LocalCluster`` of
``dask_workers`` single-threaded worker processes on this machine, or, with ``dask_address``, an existing
scheduler (``tcp://host:8786``) whose workers run anywhere (one per GPU: ``dask worker ADDRESS --nworkers 1
--nthreads 1`` on each GPU host). Workers need rgi installed and must reach the source, the catalog and
the Prefect API, like the flow process itself.

The prior is not shipped with every task (1.8 MB per micro-batch for a 64x64 DCGAN): tasks get a
:class:`PriorRef` (name/path/URL + the sha256 the flow resolved) and each worker process loads it once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rgi_core.priors import Prior, load_prior

T = TypeVar("T")

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner


@dataclass(frozen=True)
class PriorRef:
    """Where a worker finds the prior, and which exact weights (``prior_id``) the run resolved."""

    source: str  # shipped name, path or fsspec URL, as given to the flow
    prior_id: str
    device: str = "auto"

    def load(self) -> Prior:
        """The prior, loaded once per worker process; refuses weights other than the run's."""
        return _load_once(self.source, self.device, self.prior_id)


@functools.lru_cache(maxsize=4)
def _load_once(source: str, device: str, prior_id: str) -> Prior:
    p = load_prior(source, device=device)
    if p.prior_id != prior_id:
        raise ValueError(f"prior {source!r} on this worker is {p.prior_id[:12]}, the run resolved {prior_id[:12]}: "
                         "give workers the same file (a shipped name or a shared URL)")
    return p


# One compute thread per process runs every solve (and all torch work of a batch). Two reasons:
# - memory: letting every thread of the flow's pool solve at once held one set of activations per thread,
#   and peak memory grew with the length of the run (docs/benchmarks.md, P2 memory);
# - speed: with libgomp (torch's CPU threading), once a second thread has run a parallel op, every later op
#   of the first runs ~1.6x slower, even while the second sits idle (docs/benchmarks.md, P2 throughput). Prefect's
#   pool hands batches to different threads, so the solves are funnelled onto one.
# Reading, decoding, encoding and writing stay on the pool's threads and overlap with the solve.
# (A function, not a module-level executor in the task's module: Dask pickles tasks by value.)
_COMPUTE: list[ThreadPoolExecutor] = []
_COMPUTE_LOCK = threading.Lock()


def compute_executor() -> ThreadPoolExecutor:
    """This process's single compute thread (the ``compute`` of :func:`rgi_core.cleaning.clean_items`).

    When the process exits (a worker shutting down, the main thread returning), the solves on it are asked
    to stop (:func:`flows.stopping.request_stop`) before the interpreter joins the thread, so exiting takes a
    step, not the rest of a solve.
    """
    with _COMPUTE_LOCK:
        if not _COMPUTE:
            _COMPUTE.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="rgi-compute"))
            # Registered after concurrent.futures' own join hook, so it runs before it (they run in reverse).
            threading._register_atexit(_stop_at_exit)  # type: ignore[attr-defined]  # noqa: SLF001
        return _COMPUTE[0]


def _stop_at_exit() -> None:
    from flows.stopping import request_stop

    request_stop("the process is exiting")


def on_compute(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on this process's compute thread (see :func:`compute_executor`)."""
    return compute_executor().submit(fn, *args, **kwargs).result()


def dask_task_runner(address: str | None = None, workers: int = 2, threads_per_worker: int = 1) -> DaskTaskRunner:
    """A ``DaskTaskRunner``: connect to ``address``, or start a ``LocalCluster`` of ``workers`` processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {"n_workers": workers, "threads_per_worker": threads_per_worker, "processes": True,
                              "dashboard_address": None}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def on_dask() -> bool:
    """True inside a flow run whose task runner is a ``DaskTaskRunner``."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "DaskTaskRunner"


def dask_client() -> Any | None:
    """The Dask client of the current flow run's ``DaskTaskRunner``, or None when it runs on threads."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or type(ctx.task_runner).__name__ != "DaskTaskRunner":
        return None
    return ctx.task_runner.client
