"""Benchmark: build the whole book on a profile, from scratch, and report time and peak memory.

    python bench/bench_book.py [--profile quick] [--out DIR]

Peak memory is the largest resident set of any process of the build (the runner, a notebook
kernel, Sphinx), read from getrusage(RUSAGE_CHILDREN). Budgets: the default (quick) book within
20 minutes on 2 CPU cores (aim: 10) and under 4 GB.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    sections = {}
    for res in sorted((out / "results").glob("*.json")):
        doc = json.loads(res.read_text())
        sections[doc["section"]] = round(doc["runtime_s"], 1)
    report = {"profile": args.profile, "exit": proc.returncode, "wall_s": round(wall, 1),
              "peak_rss_gb": round(peak_gb, 2), "notebook_runtime_s": sections, "out": str(out)}
    print(json.dumps(report, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
