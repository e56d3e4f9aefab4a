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
