"""A dead kernel is reported as such and leaves nothing running: no worker, no shared-memory file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from neuroage_utils import run
from neuroage_utils.train import workers

REPO = Path(__file__).resolve().parents[2]


def _spin(array, folder: str, seconds: float = 120.0) -> float:
    """A long fit stand-in: says which process runs it, then computes on its (memory-mapped) array."""
    Path(folder, f"worker-{os.getpid()}").write_text(str(os.getppid()))
    end, total = time.time() + seconds, 0.0
    while time.time() < end:
        total += float(array[:1000].sum())
        time.sleep(0.01)
    return total


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids, seconds: float = 10.0) -> list:
    end = time.time() + seconds
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _wait_for_workers(folder: Path, n: int = 2, seconds: float = 120.0) -> list:
    end = time.time() + seconds
    while time.time() < end:
        found = [int(p.name.split("-")[1]) for p in folder.glob("worker-*")]
        if len(found) >= n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"workers did not start within {seconds} s")


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_their_parent_however_it_ends(tmp_path, how):
    """A plain process fitting in two workers is killed: its workers exit on their own within seconds,
    and loky's resource tracker then removes their memory-mapped arrays."""
    temp = tmp_path / "joblib"
    temp.mkdir()
    script = (f"import numpy as np\nfrom neuroage_utils.train.workers import run_tasks\nfrom tests.chapters.test_kernels import _spin\n"
              f"run_tasks(_spin, [(np.ones(500_000), {str(tmp_path)!r}) for _ in range(4)], workers=2)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "JOBLIB_TEMP_FOLDER": str(temp), "OMP_WAIT_POLICY": "PASSIVE"}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
    try:
        pids = _wait_for_workers(tmp_path)
        assert list(temp.glob("joblib_memmapping_folder_*/*")), "the array should reach the workers memory-mapped"
        parent.send_signal(how)
        parent.wait(timeout=30)
        assert _wait_gone(pids, 10.0) == [], "a worker outlived its parent"
        end = time.time() + 10
        while time.time() < end and list(temp.glob("joblib_memmapping_folder_*/*")):
            time.sleep(0.2)
        assert not list(temp.glob("joblib_memmapping_folder_*/*")), "memory-mapped arrays left behind"
    finally:
        parent.kill()


def _notebook(path: Path, folder: Path, end: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, signal, threading, time\nimport numpy as np\nfrom pathlib import Path\n"
            "from neuroage_utils.train.workers import run_tasks\nfrom tests.chapters.test_kernels import _spin\n"
            f"folder = Path({str(folder)!r})\n"
            "def end():\n"
            "    while len(list(folder.glob('worker-*'))) < 2:\n"
            "        time.sleep(0.1)\n"
            f"    {end}\n"
            "threading.Thread(target=end, daemon=True).start()\n"
            "run_tasks(_spin, [(np.ones(500_000), str(folder)) for _ in range(4)], workers=2)\n"),
    ]
    nbformat.write(nb, path)
    return path


def test_a_killed_kernel_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    """The runner executes a notebook whose kernel is SIGKILLed mid-fit (as the out-of-memory killer
    does): one line names the chapter, the cause and the fix; no worker survives it, no shared-memory
    file remains; the previous good notebook and results stay."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    folder = tmp_path / "pids"
    folder.mkdir()
    out = tmp_path / "out"
    (out / "executed").mkdir(parents=True)
    (out / "results").mkdir()
    (out / "executed" / "data.ipynb").write_text("good")
    (out / "results" / "data.json").write_text(json.dumps({"good": True}))
    source = _notebook(tmp_path / "dies.ipynb", folder, "os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(run.NotebookFailed) as failed:
        run.execute_section("data", {"x": 1}, out, source=source, available=int(8e9))
    message = str(failed.value)
    assert "\n" not in message and message.startswith("chapter 'data': the kernel was killed")
    assert "out-of-memory killer" in message and "peak" in message and "--max-cells" in message
    watch = failed.value.watch
    assert watch.returncode == -signal.SIGKILL and watch.peak and watch.peak > 0
    pids = [int(p.name.split("-")[1]) for p in folder.glob("worker-*")]
    assert len(pids) >= 2 and _wait_gone(pids, 5.0) == [], "a worker outlived its kernel"
    assert not watch.folder.exists(), "the kernel's temporary folder (memory-mapped arrays) remains"
    kernel = watch.process.pid
    shm = Path("/dev/shm")
    left = [p.name for p in shm.glob("*") if p.name.startswith((f"joblib_memmapping_folder_{kernel}_",
                                                                f"sem.loky-{kernel}-"))] if shm.is_dir() else []
    assert left == []
    assert (out / "executed" / "data.ipynb").read_text() == "good"
    assert json.loads((out / "results" / "data.json").read_text()) == {"good": True}
    assert (out / "executed" / "data.failed.ipynb").exists()


def test_a_notebook_error_is_not_called_a_dead_kernel_and_its_workers_end(tmp_path, monkeypatch):
    """A notebook that raises while its workers fit: the error is quoted (not a dead kernel), and the
    workers end with the kernel when papermill shuts it down."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    folder = tmp_path / "pids"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(
                    "import threading, time\nimport numpy as np\nfrom pathlib import Path\n"
                    "from neuroage_utils.train.workers import run_tasks\nfrom tests.chapters.test_kernels import _spin\n"
                    f"folder = Path({str(folder)!r})\n"
                    "threading.Thread(target=run_tasks, args=(_spin, [(np.ones(500_000), str(folder))] * 4, 2),\n"
                    "                 daemon=True).start()\n"
                    "while len(list(folder.glob('worker-*'))) < 2:\n"
                    "    time.sleep(0.1)\n"
                    "raise ValueError('bad value')")]
    nbformat.write(nb, tmp_path / "raises.ipynb")
    with pytest.raises(run.NotebookFailed, match=r"notebook 'data' failed at cell \d+: ValueError: bad value") as failed:
        run.execute_section("data", {"x": 1}, tmp_path / "out", source=tmp_path / "raises.ipynb")
    pids = [int(p.name.split("-")[1]) for p in folder.glob("worker-*")]
    assert len(pids) >= 2 and _wait_gone(pids, 5.0) == [], "a worker outlived its kernel"
    assert not failed.value.watch.folder.exists()


def test_parent_watch_is_started_once_and_not_in_the_parent_itself(monkeypatch):
    monkeypatch.setattr(workers, "_watching", [])
    workers.watch_parent(os.getpid())  # the calling process itself: nothing to watch
    workers.watch_parent(None)
    assert workers._watching == []
    workers.watch_parent(os.getppid())
    workers.watch_parent(os.getppid())
    assert len(workers._watching) == 1 and workers._watching[0].daemon
