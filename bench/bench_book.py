"""Benchmark: build the whole book on a profile, from scratch, and report time and peak memory.

    python bench/bench_book.py [--profile quick] [--out DIR]

Peak memory: the largest resident set of any process of the build (the runner, a notebook
kernel, Sphinx), read from getrusage(RUSAGE_CHILDREN); and, since a chapter fits models in worker
processes beside its kernel, the peak of the build's processes together, as the summed proportional
set size (shared pages such as torch's libraries counted once) sampled every 2 s (Linux). Budgets:
the default (quick) book within 15 minutes on 2 CPU cores (aim: 10) and under 4 GB.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tree_pss_gb(root: int) -> float:
    """Summed proportional set size (GB) of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024**2


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", default=None, help="build folder (default: a new temporary folder)")
    p.add_argument("--no-book", action="store_true")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix=f"neuroage-bench-{args.profile}-"))
    cmd = [sys.executable, "-m", "neuroage_utils.run", "--profile", args.profile, "--out", str(out), "--force"]
    if args.no_book:
        cmd.append("--no-book")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    peak_total = [0.0]

    def sample():
        while proc.poll() is None:
            peak_total[0] = max(peak_total[0], _tree_pss_gb(proc.pid))
            time.sleep(2.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc.wait()
    sampler.join()
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    sections = {}
    for res in sorted((out / "results").glob("*.json")):
        doc = json.loads(res.read_text())
        sections[doc["section"]] = round(doc["runtime_s"], 1)
    report = {"profile": args.profile, "exit": proc.returncode, "wall_s": round(wall, 1),
              "peak_rss_gb": round(peak_gb, 2), "peak_pss_total_gb": round(peak_total[0], 2),
              "notebook_runtime_s": sections, "out": str(out)}
    print(json.dumps(report, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
