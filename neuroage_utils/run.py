"""Execute the chapter notebooks with papermill, then render the book with execution off.

    python -m neuroage_utils.run [--data PATH] [--profile smoke|quick|paper] [--only SECTION ...]
        [--device auto|cpu|cuda] [--seed N] [--donor-key K] [--age-key K] [--out DIR]
        [--max-cells N] [--force] [--no-book] [--allow-non-counts] [--no-amp] [--list]

A notebook is re-executed only when one of its inputs changed: its source, the package source,
its parameters or the data file (Jupyter Book's own cache hashes code cells only and would miss a
change in ``neuroage_utils``). Each executed notebook is written to a temporary file and moved into
place only when it succeeded; a failed one is kept as ``executed/<section>.failed.ipynb`` for
reading, and the good copy it would have replaced stays.

Bad input exits with status 2 and a one-line reason as the last line of stderr, before any
notebook runs; so does a run whose estimated memory need exceeds the memory available (pre-flight,
``chapters/preflight.py``; ``--force`` runs it anyway). A kernel that dies (killed by the
out-of-memory killer, crashed) is reported as such in one line, and its worker processes and
memory-mapped files are removed (``chapters/kernels.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from neuroage_utils import profiles
from neuroage_utils.chapters import preflight
from neuroage_utils.chapters.kernels import KernelWatch
from neuroage_utils.data.cohort import file_sha256, load_cohort
from neuroage_utils.data.stream import load_streamed, should_stream
from neuroage_utils.errors import DataValidationError
from neuroage_utils.data.simulate import ensure_simulated
from neuroage_utils.data.sources import source_for
from neuroage_utils.results import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
PACKAGE = Path(__file__).resolve().parent
SECTIONS = profiles.SECTIONS
SECTION_TITLES = profiles.SECTION_TITLES  # one list of chapter titles (profiles)


# --------------------------------------------------------------------------------------------------
# Inputs and their fingerprint
# --------------------------------------------------------------------------------------------------


def package_fingerprint() -> str:
    """SHA-256 over the package's source and data files (what Jupyter Book's cache cannot see)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".csv", ".json", ".md"} and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(PACKAGE)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def notebook_inputs(section: str, parameters: dict, data_sha: str, pkg_sha: str) -> dict:
    source = NOTEBOOKS / f"{section}.ipynb"
    return {
        "notebook_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "package_sha256": pkg_sha,
        "parameters": parameters,
        "profile_params": profiles.section_params(parameters["profile"], section),
        "data_sha256": data_sha,
    }


def _stamp_path(out: Path, section: str) -> Path:
    return out / "executed" / f".{section}.inputs.json"


def is_up_to_date(out: Path, section: str, inputs: dict) -> bool:
    stamp = _stamp_path(out, section)
    done = (out / "executed" / f"{section}.ipynb").exists() and (out / "results" / f"{section}.json").exists()
    if not (done and stamp.exists()):
        return False
    try:
        return json.loads(stamp.read_text()) == json.loads(json.dumps(inputs))
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Executing one notebook
# --------------------------------------------------------------------------------------------------


class NotebookFailed(RuntimeError):
    """A notebook that did not finish; ``watch`` holds its kernel's :class:`KernelWatch` when known."""

    def __init__(self, message: str, watch: KernelWatch | None = None):
        super().__init__(message)
        self.watch = watch


PARAMETER_TAGS = ("parameters", "injected-parameters")


def _prepare_for_book(path: Path) -> None:
    """Tag papermill's parameter cells ``remove-cell``: the rendered page drops them (they hold
    build paths and repeat the status page), while the executed notebook, which the page offers
    for download, keeps them as the record of how it ran."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if any(t in tags for t in PARAMETER_TAGS):
            tags[:] = [t for t in tags if t != "hide-cell"]
            if "remove-cell" not in tags:
                tags.append("remove-cell")
    nbformat.write(nb, path)


def _failure_summary(path: Path) -> str:
    """The error a failed notebook ended with, as 'cell N: Name: message'."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - a summary must never hide the real failure
        return "(no executed copy to read)"
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
    return "(no error output recorded)"


def execute_section(section: str, parameters: dict, out: Path, kernel: str | None = None,
                    source: Path | None = None, available: int | None = None) -> tuple[float, KernelWatch]:
    """Run ``notebooks/<section>.ipynb`` (or ``source``) into ``out/executed/<section>.ipynb``;
    return the seconds it took and the :class:`KernelWatch` of its kernel (memory peak, exit)."""
    import nbformat
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager

    source = source or NOTEBOOKS / f"{section}.ipynb"
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    target = executed / f"{section}.ipynb"
    tmp = executed / f".{section}.{os.getpid()}.running.ipynb"
    failed = executed / f"{section}.failed.ipynb"
    kernel = kernel or nbformat.read(source, as_version=4).metadata.get("kernelspec", {}).get("name", "python3")
    # our own kernel manager (asynchronous, as nbclient's default) so the watch sees the kernel's process
    km = AsyncKernelManager(kernel_name=kernel)
    watch = KernelWatch(km, section)
    start = time.perf_counter()
    try:
        with watch:
            pm.execute_notebook(
                str(source),
                str(tmp),
                parameters=parameters,
                kernel_name=kernel,
                km=km,
                cwd=str(REPO),
                progress_bar=False,
                report_mode=False,
            )
    except Exception as exc:  # papermill raises PapermillExecutionError, kernel deaths, ...
        if tmp.exists():
            os.replace(tmp, failed)
        from nbclient.exceptions import DeadKernelError

        # a notebook that raised ends with its kernel shut down normally (or killed when slow to
        # exit): only a kernel that died during the run is reported as dead
        died = watch.cause(available) if isinstance(exc, DeadKernelError) else None
        if died:  # the kernel died: the notebook holds no error to quote
            raise NotebookFailed(f"chapter '{section}': {died} (partial notebook: {failed})", watch) from None
        reason = _failure_summary(failed) if failed.exists() else f"{type(exc).__name__}: {exc}"
        raise NotebookFailed(f"notebook '{section}' failed at {reason} (full trace: {failed})",
                             watch) from None
    _prepare_for_book(tmp)
    os.replace(tmp, target)
    failed.unlink(missing_ok=True)
    return time.perf_counter() - start, watch


def record_memory(out: Path, section: str, est: preflight.Estimate | None, watch: KernelWatch,
                  available: tuple | None, started: float) -> dict | None:
    """Add ``memory`` (the pre-flight estimate beside the measured peak) to the results file the
    chapter just wrote, so that the estimate can be checked against reality."""
    path = out / "results" / f"{section}.json"
    if not path.exists() or path.stat().st_mtime < started:
        return None
    doc = json.loads(path.read_text())
    doc["memory"] = {
        **(est.record() if est is not None else {"estimate_gb": None}),
        "peak_gb": None if watch.peak is None else round(watch.peak / 1e9, 3),
        "peak_measure": "PSS summed over the kernel and its workers, sampled every 0.5 s",
        "available_gb": None if available is None else round(available[0] / 1e9, 3),
        "available_source": None if available is None else available[1],
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return doc["memory"]


# --------------------------------------------------------------------------------------------------
# Generated pages: status and the paper's numbers
# --------------------------------------------------------------------------------------------------


def _machine() -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        torch_v = torch.__version__
    except Exception:  # noqa: BLE001
        gpu, torch_v = "unknown", "not installed"
    return (
        f"{platform.node() or 'unknown host'}; {platform.system()} {platform.machine()}; "
        f"{os.cpu_count()} CPU cores; GPU: {gpu}; Python {platform.python_version()}; torch {torch_v}"
    )


def source_commit(repo: Path = REPO) -> str:
    """The commit the package ran from, ``-dirty`` when tracked files differ from it, ``unknown``
    outside a git checkout (a release archive, or no git installed)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=30)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        # --no-optional-locks: never wait on (or take) the index lock of a git command running beside
        changed = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=repo, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if changed.returncode != 0:
        return head.stdout.strip() + " (working tree state unknown)"
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def _seconds(value: float) -> str:
    value = float(value)
    if value < 90:
        return f"{value:.1f} s"
    minutes, sec = divmod(round(value), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def hidden_kernel_messages(nb: dict, out: Path | None = None) -> list:
    """Kernel messages on stderr that the rendered page leaves out (``nb_output_stderr: remove``),
    progress bars excepted, each as one short line without the build machine's paths (a path under
    ``out`` is shown relative to it, any other by its last part)."""
    import re

    def short(text: str) -> str:
        if out is not None:
            text = text.replace(str(out).rstrip("/") + "/", "")
        return re.sub(r"(?<![\w.])/(?:[^\s/:'\"]+/)+([^\s/:'\"]+)", r"…/\1", text)

    found = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream" or output.get("name") != "stderr":
                continue
            text = "".join(output.get("text", ""))
            for line in text.replace("\r", "\n").splitlines():
                match = re.search(r"\b(\w*(?:Warning|Error))\b: (.+)", line)
                if match:
                    message = short(match.group(1) + ": " + match.group(2).strip())
                    found.append(message if len(message) <= 140 else message[:139] + "…")
    return found


def _markdown_table(header: list, rows: list, align: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *["| " + " | ".join(str(v) for v in row) + " |" for row in rows]]


def _memory_cell(memory: dict | None) -> str:
    """``estimate / peak`` in GB for the status page (``-`` for what was not recorded)."""
    if not memory:
        return "-"
    show = lambda v: "-" if v is None else (f"{v:.1f} GB" if v >= 0.95 else f"{v:.2f} GB")  # noqa: E731
    return f"{show(memory.get('estimate_gb'))} / {show(memory.get('peak_gb'))}"


def write_status_page(out: Path, timings: dict, total_s: float | None = None) -> Path:
    """``executed/status.md``: which data, code and device each page executed on, and how long."""
    rows, datasets, devices, profiles_seen, hidden = [], {}, set(), set(), []
    kernel_total = 0.0
    for section in SECTIONS:
        res = out / "results" / f"{section}.json"
        nb_path = out / "executed" / f"{section}.ipynb"
        if not (res.exists() and nb_path.exists()):
            continue
        doc = json.loads(res.read_text())
        d = doc["data"]
        origin = "simulated cohort" if d["simulated"] else d.get("source", "user data")  # realdata: its package
        short = d["sha256"][:12]
        datasets[short] = (
            f"`{Path(d['path']).name}` ({origin}), SHA-256 `{short}`: {d['n_cells']:,} {d.get('rows', 'cells')} x "
            f"{d['n_genes']:,} genes, {d['n_donors']} donors"
        )
        profiles_seen.add(doc["profile"])
        run_params = doc.get("params", {})
        device = str(run_params.get("device", "not recorded"))
        devices.add(device)
        # how the torch fits ran: bf16 autocast, and independent fits side by side in worker processes
        ran = device + (", bf16" if run_params.get("amp") else "") + (
            f", {run_params['workers']} workers" if int(run_params.get("workers") or 1) > 1 else "")
        # non-breaking spaces keep a date on one line in a narrow column
        when = dt.datetime.fromtimestamp(nb_path.stat().st_mtime, dt.timezone.utc).strftime("%d %b %Y %H:%M")
        when = when.replace(" ", "\u00a0")
        try:  # papermill records the wall time of the whole execution in the notebook
            nb = json.loads(nb_path.read_text())
            seconds = float(nb["metadata"]["papermill"]["duration"])
            kernel_total += seconds
            took = _seconds(seconds)
        except (ValueError, KeyError, TypeError):
            nb, took = {}, "?"
        hidden += [f"{SECTION_TITLES[section]}: {m}" for m in hidden_kernel_messages(nb, out)]
        how = "this build" if section in timings else "cached"
        rows.append([f"[{SECTION_TITLES[section]}]({section}.ipynb)", ran, _seconds(doc["runtime_s"]), took,
                     _memory_cell(doc.get("memory")), f"{when} ({how})", f"`{short}`"])
    executed_now = [s for s in SECTIONS if s in timings]
    header = ["page", "device (precision, workers)", "analysis", "kernel wall time", "memory: estimated / peak",
              "executed (UTC)", "data"]
    align = [":---", ":---", "---:", "---:", "---:", ":---", ":---"]
    if len(datasets) <= 1:  # one data file: named once above, not repeated on every row
        header, align, rows = header[:-1], align[:-1], [row[:-1] for row in rows]
    summary = [
        f"- **Code**: commit `{source_commit()}` of the repository (`-dirty`: with uncommitted changes).",
        f"- **Profile**: {', '.join(sorted(profiles_seen)) or 'none'}; **device**: "
        f"{', '.join(sorted(devices)) or 'none'}.",
        *[f"- **Data**: {line}" for line in datasets.values()],
        f"- **Total kernel time** over the pages shown: {_seconds(kernel_total)}; "
        + (f"this build executed {len(executed_now)} of them in {_seconds(total_s)}."
           if executed_now and total_s is not None else
           f"this build executed {len(executed_now)} of them." if executed_now else
           "this build re-used every page (inputs unchanged)."),
        f"- **Machine** of the latest build: {_machine()}.",
        # the reference time of the whole book comes from its one source (bench/results.json), read at
        # render time: this page's times are this build's own, on this machine, and may differ
        "- **Reference time of the quick book** ([benchmarks](../book/benchmarks.md)): {{ bench_book_time }} from a "
        "fresh clone on {{ bench_machine }} (commit {{ bench_book_commit }}, {{ bench_book_date }} UTC).",
    ]
    notes = []
    if hidden:
        notes = [
            "",
            "Kernel warnings left out of the rendered pages (each page's downloadable notebook keeps "
            "them in full):",
            "",
            *[f"- {line}" for line in hidden],
        ]
    text = "\n".join(
        [
            "# Build status",
            "",
            "Which code, data and device each page executed on, and how long it took. Pages are executed by "
            "`python -m neuroage_utils.run` with papermill, then rendered with execution off; a page is "
            "re-executed only when its notebook, the `neuroage_utils` package, its parameters or its data "
            "changed (*cached* below). *Analysis* is what the notebook measured from loading the data to "
            "writing its results; *kernel wall time* is papermill's, kernel start-up included. *Memory* is the "
            "runner's pre-flight estimate beside the peak it measured (proportional set size summed over the "
            "kernel and its worker processes, sampled every 0.5 s).",
            "",
            *summary,
            "",
            *_markdown_table(header, rows, align),
            *notes,
            "",
        ]
    )
    return atomic_write_text(out / "executed" / "status.md", text)


def write_paper_page(out: Path) -> Path:
    """``executed/paper.md``: the paper's reported numbers, in one table of their own."""
    from neuroage_utils import paper
    from neuroage_utils.report import tables

    # Every number on this page is the paper's, so the headers need not say so.
    lines = [tables.markdown(paper.reported_table(), labels={"paper_mae": "MAE (years)", "paper_r": "r"},
                             missing={"paper_r": "not reported"})]
    text = "\n".join(
        [
            "# What the paper reports",
            "",
            f"The headline numbers of {{cite:t}}`{paper.CITATION_KEY}`, copied from the paper (and, for the null "
            "model, from its authors' code). They are never used as results of ours: each chapter shows "
            "them in a column labelled *paper* beside the values its own executed code produced.",
            "",
            *lines,
            "",
            "The tuning tables (Tables 1-4) appear in their chapters, each beside our runs of the same "
            "configurations.",
            "",
        ]
    )
    return atomic_write_text(out / "executed" / "paper.md", text)


# --------------------------------------------------------------------------------------------------
# The book
# --------------------------------------------------------------------------------------------------


def _toc_for(out: Path) -> tuple[Path, list]:
    """The project's ``_toc.yml`` minus the chapters not executed in ``out`` (written to ``out``),
    and the names of the chapters left out."""
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    missing = []

    def executed(entry) -> bool:
        name = entry.get("file", "")
        if not name.startswith("executed/"):
            return True
        found = any((out / f"{name}{ext}").exists() for ext in (".ipynb", ".md"))
        if not found:
            missing.append(name.split("/", 1)[1])
        return found

    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part.get("chapters", []) if executed(c)]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    if missing:
        print(f"book: leaving out pages not executed yet: {', '.join(missing)}", flush=True)
    # Beside the real _toc.yml when rendering the repository itself, so that one is never touched.
    path = out / ("_toc.partial.yml" if out.resolve() == REPO else "_toc.yml")
    atomic_write_text(path, yaml.safe_dump(toc, sort_keys=False))
    return path, missing


def build_book(out: Path) -> Path:
    """Render the book into ``out/_build/html`` with execution off; Sphinx warnings are errors."""
    if out.resolve() != REPO:
        # Render a copy of the hand-written pages beside the executed notebooks of ``out``.
        shutil.copytree(REPO / "book", out / "book", dirs_exist_ok=True)
        shutil.copy2(REPO / "_config.yml", out / "_config.yml")
    toc, missing = _toc_for(out)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(out), "--toc", str(toc),
           "--config", str(out / "_config.yml"), "-n", "--keep-going"]
    if missing:
        # Links to the chapters left out cannot resolve: a partial book reports them, not fails.
        print("book: partial book, so Sphinx warnings are reported but not fatal", flush=True)
    else:
        cmd.append("-W")
    print("book: jupyter-book " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    if missing:
        warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "WARNING" in ln]
        print("\n".join(warnings[-20:]), flush=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise NotebookFailed("the book build failed (Sphinx warnings count as errors); see the log above")
    index = out / "_build" / "html" / "index.html"
    print(f"book: built in {time.perf_counter() - start:.1f} s -> {index}", flush=True)
    return index


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m neuroage_utils.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="an .h5ad with raw counts (default: the simulated cohort of the profile)")
    p.add_argument("--profile", default="quick", choices=profiles.PROFILE_NAMES)
    p.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections (see --list)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--donor-key", default="donor_id", help="obs column with the donor (study file: ID)")
    p.add_argument("--age-key", default="age", help="obs column with the age in years (study file: Age)")
    p.add_argument("--out", default=str(REPO), help="where executed/, results/ and _build/ go (default: the repo)")
    p.add_argument("--max-cells", type=int, metavar="N",
                   help="use at most N cells per donor (drawn at random with the seed; recorded in the results)")
    p.add_argument("--force", action="store_true", help="re-execute even notebooks whose inputs did not change, and "
                   "run chapters whose estimated memory need exceeds the memory available")
    p.add_argument("--no-book", action="store_true", help="execute notebooks only; do not render the book")
    p.add_argument("--allow-non-counts", action="store_true",
                   help="accept values that are not raw counts; count models are then skipped")
    p.add_argument("--no-amp", action="store_true",
                   help="turn off bf16 mixed precision (on in the quick and paper profiles where the device multiplies bf16 in "
                        "hardware: CUDA, or a CPU with AMX or a measured-fast AVX512-BF16)")
    p.add_argument("--stream", action="store_true",
                   help="read the data from the file in blocks (memory flat in the number of cells); automatic above "
                        "5e8 stored values: the aggregated clocks use every cell, cell-level models a per-donor sample")
    p.add_argument("--list", action="store_true", help="print the sections and exit")
    return p.parse_args(argv)


def _workers(section: str, args) -> int:
    """Worker processes a chapter will fit in, as the chapter decides them (a profile's ``n_jobs``, if any)."""
    from neuroage_utils.train.workers import worker_count

    return worker_count(args.device, profiles.section_params(args.profile, section).get("n_jobs"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SECTIONS:
            print(f"{s:10s} {SECTION_TITLES[s]}")
        return 0
    sections = list(SECTIONS)
    if args.only:
        unknown = [s for s in args.only if s not in SECTIONS]
        if unknown:
            print(f"error: unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}", file=sys.stderr)
            return 2
        sections = [s for s in SECTIONS if s in args.only]
    if args.max_cells is not None and args.max_cells < 1:
        print("error: --max-cells must be a positive number of cells per donor", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    try:
        if args.device == "cuda":
            from neuroage_utils.train import resolve_device

            resolve_device("cuda")
        if args.data:
            data_path = Path(args.data).resolve()
            donor_key, age_key = args.donor_key, args.age_key
        else:
            start = time.perf_counter()
            print(f"data: simulated cohort, profile {args.profile}, seed {args.seed}", flush=True)
            data_path = ensure_simulated(args.profile, args.seed, out, progress=sys.stderr.isatty())
            print(f"data: {data_path} ready in {time.perf_counter() - start:.1f} s", flush=True)
            donor_key, age_key = "donor_id", "age"
        # the shape from the file's metadata: the pre-flight estimate comes before anything is loaded
        shape = preflight.read_shape(data_path, donor_key, args.max_cells)
        data_sha = file_sha256(data_path, cache_dir=out / ".cache" / "sha256")
    except DataValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    parameters = {
        "data_path": str(data_path),
        "profile": args.profile,
        "device": args.device,
        "seed": args.seed,
        "donor_key": donor_key,
        "age_key": age_key,
        "out_dir": str(out),
        "allow_non_counts": bool(args.allow_non_counts),
    }
    if args.no_amp:  # passed only when set: a notebook need not declare it (Chapter reads it if present)
        parameters["amp"] = False
    if args.max_cells is not None:  # likewise
        parameters["max_cells"] = int(args.max_cells)
    if args.stream:  # likewise; without it the chapters stream by size
        parameters["stream"] = True
    pkg_sha = package_fingerprint()
    plan = []
    for section in sections:
        inputs = notebook_inputs(section, parameters, data_sha, pkg_sha)
        source = source_for(section)  # a section with its own data (not the cohort): their fingerprint
        if source is not None:
            inputs[f"{section}_files"] = source.fingerprint(out)
        plan.append((section, inputs, not args.force and is_up_to_date(out, section, inputs)))
    try:
        available = preflight.available_memory()
        # the streamed path when the chapters will stream (by size or --stream; not under --max-cells)
        formula = ("streamed" if args.max_cells is None and should_stream(data_path, True if args.stream else None)
                   else "in-memory")
        estimates = {section: preflight.estimate(section, shape, args.profile, _workers(section, args), formula)
                     for section, _, current in plan if not current}
    except DataValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    too_big = [e for e in estimates.values() if e.bytes > available[0]]
    if too_big and not args.force:
        print(f"error: {preflight.refusal(too_big, shape, args.profile, available[0], available[1])}", file=sys.stderr)
        return 2
    if args.data:
        try:
            print(f"data: checking {data_path}", flush=True)
            if should_stream(data_path, True if args.stream else None):  # checked block by block, never loaded
                load_streamed(data_path, args.donor_key, args.age_key, seed=args.seed,
                              allow_non_counts=args.allow_non_counts)
            else:
                load_cohort(data_path, args.donor_key, args.age_key, seed=args.seed,
                            allow_non_counts=args.allow_non_counts)
        except DataValidationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    timings = {}
    total = time.perf_counter()
    for i, (section, inputs, current) in enumerate(plan, 1):
        label = f"[{i}/{len(sections)}] {section:10s}"
        if current:
            print(f"{label} up to date (inputs unchanged; --force re-runs it)", flush=True)
            continue
        est = estimates[section]
        print(f"{label} executing (memory estimate {preflight.gb(est.bytes)}) ...", flush=True)
        started = time.time()
        try:
            seconds, watch = execute_section(section, parameters, out, available=available[0])
        except NotebookFailed as exc:
            print(f"{label} FAILED", flush=True)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        memory = record_memory(out, section, est, watch, available, started)
        atomic_write_text(_stamp_path(out, section), json.dumps(inputs, indent=1))
        timings[section] = f"executed in {seconds:.1f} s"
        peak = f", peak {memory['peak_gb']:.2f} GB" if memory and memory["peak_gb"] is not None else ""
        print(f"{label} done in {seconds:.1f} s{peak}", flush=True)
    print(f"notebooks: {time.perf_counter() - total:.1f} s", flush=True)
    write_status_page(out, timings, total_s=time.perf_counter() - total)
    write_paper_page(out)
    if args.no_book:
        return 0
    try:
        build_book(out)
    except NotebookFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
