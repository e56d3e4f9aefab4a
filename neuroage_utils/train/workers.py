"""Independent fits in worker processes, one thread each, on a multi-core CPU.

A grid of small torch models (or elastic nets, or cross-validation folds) does not keep two cores
busy from one process: the element-wise work between the matrix products is short and each
parallel region waits for the slowest thread. Two single-threaded processes do: on the 2-core
development machine a quick-profile VAE epoch took 0.37 s with 2 threads and 0.43 s with 1, so two
fits side by side train 1.7x as many epochs per second. On a GPU the fits run one after the other in
the calling process (the device is the shared resource).

Each task is seeded by its caller, so the models do not depend on the order the workers finish in;
with one thread instead of two, floating-point sums may round differently in the last digits.
Large numpy arrays reach the workers memory-mapped (joblib), not copied per task.

A worker ends with the process that started it, however that one ends: each worker watches its
parent's pid and exits within a second of it changing (the parent died: killed, out of memory,
crashed), so no orphan keeps computing or holding memory-mapped arrays; the runner also kills what
is left of a dead kernel's process group and removes its temporary folder (``chapters/kernels.py``).

On a Dask cluster: one setting, ``NEUROAGE_DASK_SCHEDULER=tcp://host:8786`` (or ``backend="dask"``,
with ``scheduler=`` or a ``distributed.Client`` already made in the session), sends the same chunks to
the cluster through joblib's dask backend, whatever ``workers`` says: grids and CV folds then spread
over every machine of the cluster (which needs this package installed, as its workers import ``fn``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence

import torch

from neuroage_utils.train.device import resolve_device

__all__ = ["worker_count", "run_tasks", "dask_scheduler"]

#: Environment override of the number of worker processes (e.g. ``NEUROAGE_WORKERS=1`` for one fit
#: at a time in the calling process).
WORKERS_ENV = "NEUROAGE_WORKERS"
#: Address of a Dask scheduler (``tcp://host:8786``): independent fits go to that cluster.
DASK_ENV = "NEUROAGE_DASK_SCHEDULER"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_count(device="cpu", requested: int | None = None) -> int:
    """Worker processes for independent fits: ``requested`` (or ``$NEUROAGE_WORKERS``) if given, else
    one per core on a CPU; always 1 on a GPU."""
    if resolve_device(device if not isinstance(device, torch.device) else str(device)).type != "cpu":
        return 1
    if requested is None and os.environ.get(WORKERS_ENV, "").strip():
        requested = int(os.environ[WORKERS_ENV])
    n = _cores() if requested is None else int(requested)
    return max(1, min(n, _cores()))


#: Seconds between a worker's looks at its parent.
PARENT_POLL_S = 0.5
_watching: list = []


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(PARENT_POLL_S)
    os._exit(1)  # the parent is gone: end now, from any thread, without waiting for the task


def watch_parent(parent: int | None) -> None:
    """Exit this process when ``parent`` (the process that started it) is no longer its parent; one
    daemon thread per process, started once."""
    if parent is None or _watching or parent == os.getpid():
        return
    if os.getppid() != parent:  # already orphaned before the first task
        os._exit(1)
    thread = threading.Thread(target=_exit_with, args=(parent,), name="watch-parent", daemon=True)
    thread.start()
    _watching.append(thread)


def _single_threaded(fn: Callable, chunk: Sequence[Sequence], parent: int | None = None) -> list:
    """Run ``fn(*task)`` for each task of ``chunk`` in a worker with one torch and one BLAS/OpenMP
    thread; the worker exits if ``parent`` dies."""
    from threadpoolctl import threadpool_limits

    watch_parent(parent)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        return [fn(*task) for task in chunk]


def dask_scheduler() -> str | None:
    """The scheduler address of ``$NEUROAGE_DASK_SCHEDULER``, or None."""
    return os.environ.get(DASK_ENV, "").strip() or None


def _dask_client(scheduler: str | None):
    """A client of ``scheduler``, else the session's current client (one made by the caller)."""
    try:
        from distributed import Client, get_client
    except ImportError:
        raise RuntimeError("backend='dask' needs dask[distributed]: pip install the version in requirements.txt") from None
    if scheduler:
        return Client(scheduler, set_as_default=False), True
    try:
        return get_client(), False
    except ValueError:
        raise RuntimeError(f"backend='dask' found no cluster: set {DASK_ENV}=tcp://host:port, pass scheduler=, "
                           "or make a distributed.Client first") from None


def run_tasks(fn: Callable, tasks: Iterable[Sequence], workers: int = 1,
              progress: Callable[[int, int], None] | None = None, chunks_per_worker: int = 3,
              backend: str | None = None, scheduler: str | None = None) -> list:
    """``[fn(*task) for task in tasks]``, in ``workers`` processes when ``workers > 1``.

    Results come back in the order of ``tasks``. Tasks are dealt round-robin into at most
    ``chunks_per_worker * workers`` chunks, one message each, so that data shared by many tasks
    (e.g. the cohort matrix of every CV fold) is sent a few times, not once per task; round-robin
    gives every chunk the same mix of cheap and expensive tasks when they come grouped.
    ``progress(done, total)`` is called in the calling process as chunks finish. ``fn`` and the
    tasks must be picklable when ``workers > 1`` (module-level functions, plain data, estimators).

    ``backend``: ``None`` (default) is ``"dask"`` when ``$NEUROAGE_DASK_SCHEDULER`` is set, else
    joblib's ``"loky"`` processes on this machine; ``"dask"`` sends the chunks to a Dask cluster
    (``scheduler`` address, that variable, or the session's client), as many chunks as the cluster
    has threads times ``chunks_per_worker``.
    """
    tasks = [tuple(t) for t in tasks]
    total = len(tasks)
    out: list = [None] * total
    scheduler = scheduler or dask_scheduler()
    backend = backend or ("dask" if scheduler else "loky")
    if backend not in ("loky", "dask"):
        raise ValueError(f"unknown backend {backend!r}: use 'loky' or 'dask'")
    if backend == "dask" and total > 1:
        return _run_on_dask(fn, tasks, out, progress, chunks_per_worker, scheduler)
    if workers <= 1 or total <= 1:
        for i, task in enumerate(tasks):
            out[i] = fn(*task)
            if progress is not None:
                progress(i + 1, total)
        return out
    from joblib import Parallel, delayed

    n_chunks = min(total, max(1, int(chunks_per_worker)) * workers)
    index = _chunks(total, n_chunks)
    results = Parallel(n_jobs=min(workers, n_chunks), backend="loky", return_as="generator")(
        delayed(_single_threaded)(fn, [tasks[i] for i in chunk], os.getpid()) for chunk in index)
    return _collect(index, results, out, progress)


def _collect(index, results, out: list, progress) -> list:
    """Place each chunk's values at its tasks' positions as the chunks finish, reporting progress."""
    done, total = 0, len(out)
    for chunk, values in zip(index, results):
        for i, value in zip(chunk, values):
            out[i] = value
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return out


def _chunks(total: int, n_chunks: int) -> list[list[int]]:
    """Task indices dealt round-robin into ``n_chunks`` chunks."""
    return [list(range(start, total, n_chunks)) for start in range(n_chunks)]


def _run_on_dask(fn, tasks, out, progress, chunks_per_worker, scheduler) -> list:
    from joblib import Parallel, delayed, parallel_config

    client, owned = _dask_client(scheduler)
    try:
        threads = max(1, sum(client.nthreads().values()))
        index = _chunks(len(tasks), min(len(tasks), max(1, int(chunks_per_worker)) * threads))
        with parallel_config(backend="dask", client=client):
            results = Parallel(n_jobs=-1, return_as="generator")(
                delayed(_single_threaded)(fn, [tasks[i] for i in chunk]) for chunk in index)
            _collect(index, results, out, progress)
    finally:
        if owned:
            client.close()
    return out

