"""Independent fits in worker processes: order, chunking, one thread per worker, and the chapter API."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from neuroage_utils.train import workers
from neuroage_utils.train.workers import run_tasks, worker_count


def _square_and_threads(x: int) -> tuple[int, int, int]:
    return x * x, torch.get_num_threads(), os.getpid()


def test_results_come_back_in_task_order_from_round_robin_chunks():
    seen = []
    out = run_tasks(_square_and_threads, [(i,) for i in range(11)], workers=2,
                    progress=lambda done, total: seen.append((done, total)))
    assert [r[0] for r in out] == [i * i for i in range(11)]
    assert all(r[1] == 1 for r in out)  # one torch thread in every worker
    assert len({r[2] for r in out}) >= 1 and os.getpid() not in {r[2] for r in out}  # not the caller
    assert seen[-1] == (11, 11) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_one_worker_runs_in_the_calling_process_in_order():
    seen = []
    out = run_tasks(_square_and_threads, [(i,) for i in range(4)], workers=1, progress=lambda d, t: seen.append(d))
    assert [r[0] for r in out] == [0, 1, 4, 9] and {r[2] for r in out} == {os.getpid()}
    assert seen == [1, 2, 3, 4]


def test_worker_count_one_per_core_on_a_cpu_and_the_override(monkeypatch):
    monkeypatch.delenv(workers.WORKERS_ENV, raising=False)
    monkeypatch.setattr(workers, "_cores", lambda: 4)
    assert worker_count("cpu") == 4
    assert worker_count("cpu", requested=2) == 2 and worker_count("cpu", requested=9) == 4
    monkeypatch.setenv(workers.WORKERS_ENV, "1")
    assert worker_count("cpu") == 1
    assert worker_count(torch.device("cpu"), requested=3) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_worker_count_is_one_on_a_gpu():
    assert worker_count("cuda") == 1


def test_fit_score_many_scores_as_fit_score_does(tmp_path, h5ad_path):
    from neuroage_utils.models.mlp import MLPRegressor
    from neuroage_utils.chapters.chapter import Chapter, FitTask

    from tests.conftest import make_adata

    path = h5ad_path(make_adata(n_donors=12, cells_per_donor=8, n_genes=12))
    grid = [(8,), (4, 4), (6,)]

    def model(hidden):
        return MLPRegressor(hidden=hidden, epochs=2, batch_size=16, device="cpu", progress=False, seed=0)

    one = Chapter("baselines", data_path=str(path), profile="smoke", out_dir=str(tmp_path), workers=1)
    two = Chapter("baselines", data_path=str(path), profile="smoke", out_dir=str(tmp_path), workers=2)
    X = one.cohort.X
    sequential = [one.fit_score(f"m{i}", model(h), X, config={"hidden": list(h)}) for i, h in enumerate(grid)]
    parallel = two.fit_score_many([FitTask(f"m{i}", model(h), X, extra={"config": {"hidden": list(h)}})
                                   for i, h in enumerate(grid)] + [FitTask("fit_only", model((8,)), X, score=False)])
    assert parallel[-1] is None and two.has_fitted("fit_only") and "fit_only" not in two.models
    assert two.release("fit_only") is not None and not two.has_fitted("fit_only")
    with pytest.raises(TypeError, match="FitTask"):
        two.fit_score_many([{"key": "m9", "model": model((8,)), "X": X}])
    for a, b in zip(sequential, parallel[:-1]):
        assert a["n_donors"] == b["n_donors"] and a["config"] == b["config"]
        # the same seeded fits; one thread instead of two may round sums differently
        assert b["mae"] == pytest.approx(a["mae"], abs=0.5)
    assert list(two.models) == ["m0", "m1", "m2"]
    assert np.array_equal(np.asarray(two.cell_predictions["m0"]).shape, np.asarray(one.cell_predictions["m0"]).shape)


def _fold_fit(X, y, train, test, alpha):
    """One CV fold of an elastic net (a module-level function: it travels to the workers)."""
    from sklearn.linear_model import ElasticNet

    model = ElasticNet(alpha=alpha, l1_ratio=0.5, max_iter=5000).fit(X[train], y[train])
    try:
        from distributed import get_worker

        where = get_worker().address
    except (ImportError, ValueError):
        where = None
    return float(np.abs(model.predict(X[test]) - y[test]).mean()), where


def test_independent_fits_run_on_a_dask_cluster_with_one_setting(monkeypatch):
    """CV folds x a penalty grid sent to a local Dask cluster (in-process, no sockets) by NEUROAGE_DASK_SCHEDULER alone:
    the same errors as fitted in order here, and every fit ran on a worker of that cluster."""
    distributed = pytest.importorskip("distributed")
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    y = X[:, 0] * 2 - X[:, 1] + rng.normal(scale=0.3, size=120)
    tasks = [(X, y, tr, te, a) for tr, te in KFold(4, shuffle=True, random_state=0).split(X) for a in (0.01, 0.1)]
    expected = [(mae, None) for mae, _ in run_tasks(_fold_fit, tasks, workers=1)]
    threads = torch.get_num_threads()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,  # in-process: no network
                                  dashboard_address=None) as cluster:
        monkeypatch.setenv(workers.DASK_ENV, cluster.scheduler_address)
        seen = []
        got = run_tasks(_fold_fit, tasks, workers=1, progress=lambda done, total: seen.append(done))
        addresses = set(cluster.scheduler_info["workers"])
    torch.set_num_threads(threads)  # the in-process workers set one thread per task
    assert [mae for mae, _ in got] == pytest.approx([mae for mae, _ in expected], rel=1e-12)
    assert {where for _, where in got} <= addresses and None not in {where for _, where in got}
    assert seen[-1] == len(tasks)


def test_dask_backend_without_a_cluster_says_how_to_name_one(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.delenv(workers.DASK_ENV, raising=False)
    with pytest.raises(RuntimeError, match="NEUROAGE_DASK_SCHEDULER"):
        run_tasks(_square_and_threads, [(1,), (2,)], backend="dask")
    with pytest.raises(ValueError, match="unknown backend"):
        run_tasks(_square_and_threads, [(1,), (2,)], backend="threads")
