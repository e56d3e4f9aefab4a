"""A chapter's notebook kernel, watched from the runner: its memory peak, how it ended, what it left.

:class:`KernelWatch` wraps one papermill execution. It

- samples the proportional set size (PSS: shared pages such as torch's libraries and the
  memory-mapped arrays of the workers counted once) summed over the kernel and every process below
  it, twice a second, and keeps the peak: the measured side of the pre-flight estimate;
- gives the kernel its own temporary folder for joblib's memory-mapped arrays
  (``JOBLIB_TEMP_FOLDER``, in ``/dev/shm`` when it has room, as joblib would choose);
- after the kernel ended, however it ended, waits a moment for its workers (which watch their parent
  and exit, see :mod:`neuroage_utils.train.workers`), kills whatever is left of its process group
  (jupyter_client starts each kernel in a session of its own), removes the temporary folder and the
  loky semaphores of the processes it saw;
- says why a kernel died (:meth:`KernelWatch.cause`): killed by SIGKILL (the out-of-memory killer,
  with the peak it reached), a crash in a compiled library (another signal), or an exit status.

Linux only for the measurements (``/proc``); elsewhere the peak is not recorded and the rest still runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["KernelWatch", "tree_pss", "oom_kills"]

SHM = Path("/dev/shm")
#: joblib puts its memory-mapped arrays in /dev/shm when at least this much is free there.
SHM_MIN_FREE = 2e9


def _stat(pid: int) -> list | None:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgid, ... (None: no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children() -> tuple[dict[int, list[int]], dict[int, str]]:
    """Children of every process, and every process's start time (which tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(pid)
            started[pid] = fields[19]
        except (OSError, ValueError, IndexError):
            continue
    return children, started


def tree_pss(root: int) -> tuple[int, dict]:
    """Summed PSS (bytes) of ``root`` and all its descendants, and their pids with their start times
    (Linux /proc)."""
    children, started = _children()
    total, seen, todo = 0, {}, [root]
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in started:
            continue
        seen[pid] = started[pid]
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total, seen


def oom_kills() -> int | None:
    """The out-of-memory killer's kills in this process's cgroup so far (v2 ``memory.events``, v1
    ``memory.oom_control``); None where the count cannot be read."""
    from neuroage_utils.chapters.preflight import memory_cgroup_folders

    for version, folder in memory_cgroup_folders():
        try:
            name = "memory.events" if version == "v2" else "memory.oom_control"
            for row in (folder / name).read_text().splitlines():
                if row.startswith("oom_kill "):
                    return int(row.split()[1])
        except (OSError, ValueError):
            continue
    return None


def _temp_root() -> Path:
    try:
        usage = shutil.disk_usage(SHM)
        if usage.free >= SHM_MIN_FREE and os.access(SHM, os.W_OK):
            return SHM
    except OSError:
        pass
    return Path(tempfile.gettempdir())


class KernelWatch:
    """Watch the kernel of one papermill run (see the module's docstring).

    ``with KernelWatch(km, label) as watch: papermill.execute_notebook(..., km=km)``; afterwards
    ``watch.peak`` (bytes, or None), ``watch.returncode`` (None while unknown; negative: the signal)
    and ``watch.left`` (processes that had to be killed)."""

    def __init__(self, km, label: str = "kernel", interval: float = 0.5, grace: float = 5.0):
        self.km, self.label, self.interval, self.grace = km, label, interval, grace
        self.process = None
        self.pgid: int | None = None
        self.peak: int | None = None
        self.seen: dict = {}  # pid -> start time, of the kernel and every process seen below it
        self.left: list = []
        self.folder: Path | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{label}", daemon=True)
        self._saved_env: str | None = None
        self._oom_before = oom_kills()

    # -- the run -------------------------------------------------------------------------------
    def __enter__(self) -> "KernelWatch":
        self.folder = Path(tempfile.mkdtemp(prefix=f"neuroage-{os.getpid()}-{self.label}-", dir=_temp_root()))
        # The kernel inherits the runner's environment when it starts: its joblib arrays go here.
        self._saved_env = os.environ.get("JOBLIB_TEMP_FOLDER")
        os.environ["JOBLIB_TEMP_FOLDER"] = str(self.folder)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            provisioner = getattr(self.km, "provisioner", None)
            process = getattr(provisioner, "process", None) if provisioner is not None else None
            if process is not None and self.process is None:
                self.process, self.pgid = process, getattr(provisioner, "pgid", None)
            if self.process is not None and self.process.poll() is None and Path("/proc").exists():
                total, pids = tree_pss(self.process.pid)
                self.seen.update(pids)
                self.peak = max(self.peak or 0, total)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._saved_env is None:
            os.environ.pop("JOBLIB_TEMP_FOLDER", None)
        else:
            os.environ["JOBLIB_TEMP_FOLDER"] = self._saved_env
        self.cleanup()

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    # -- what is left ---------------------------------------------------------------------------
    def _alive(self) -> list[int]:
        """Processes seen below the kernel that still run (the same processes: same start time)."""
        alive = []
        for pid, started in sorted(self.seen.items()):
            stat = _stat(pid)
            if stat is not None and stat[19] == started and stat[0] != "Z":
                alive.append(pid)
        return alive

    def cleanup(self) -> None:
        """Wait up to ``grace`` seconds for the kernel's processes to end, kill the rest, remove the
        temporary folder and the loky semaphores of the processes seen."""
        if self.process is not None:
            try:
                self.process.wait(timeout=self.grace)
            except Exception:  # noqa: BLE001 - still running: killed with its group below
                pass
        deadline = time.monotonic() + self.grace
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.left = self._alive()
        if self.left:
            # the group is still the kernel's while one of its own processes is in it (a process
            # group's id is not reused while the group exists): kill it whole, then the rest seen
            if self.pgid and any((_stat(pid) or [0, 0, None])[2] == str(self.pgid) for pid in self.left):
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except OSError:
                    pass
            for pid in self.left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if SHM.is_dir():
            for pid in self.seen:
                for sem in SHM.glob(f"sem.loky-{pid}-*"):
                    sem.unlink(missing_ok=True)

    # -- why it ended ---------------------------------------------------------------------------
    def cause(self, available: int | None = None) -> str | None:
        """Why the kernel died, in words with the fix; None when it exited normally (status 0)."""
        code = self.returncode
        if code in (0, None):
            return None
        peak = f"peak {self.peak / 1e9:.1f} GB measured" if self.peak else "peak not measured"
        room = f" of {available / 1e9:.1f} GB available before it started" if available else ""
        before, after = self._oom_before, oom_kills()
        if code == -signal.SIGKILL:
            if before is not None and after is not None and after > before:
                why = "killed by the out-of-memory killer"
            else:
                why = "killed by SIGKILL, most likely by the out-of-memory killer"
            return (f"the kernel was {why} ({peak}{room}): free memory or lower the need "
                    "(--max-cells N per donor, a smaller --profile, NEUROAGE_WORKERS=1, --device cuda)")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
            if -code in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                return f"the kernel was stopped by {name} from outside ({peak}): run it again"
            return (f"the kernel crashed with {name} in a compiled library ({peak}): run it again with "
                    "NEUROAGE_WORKERS=1 or --device cpu, and report it with the failed notebook")
        return f"the kernel exited with status {code} ({peak}): see the failed notebook"
