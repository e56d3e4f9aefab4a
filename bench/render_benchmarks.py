"""Render book/benchmarks.md from bench/results.json (or say that it is absent).

    .venv/bin/python bench/render_benchmarks.py [bench/results.json] [book/benchmarks.md]
"""

import json
import sys
from pathlib import Path

from neuroage_utils.data.stream import STREAM_ABOVE_NNZ

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # neuroage_utils of this checkout (the one wording of the book's time)


def _f(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, (int, float)):
        return f"{x:,.{digits}f}"
    return str(x)


def _err(d):
    return d.get("error") if isinstance(d, dict) else "not run"


#: How to run the paper profile on a GPU and what its results record (the same on every rendering).
GPU_RUN = [
    "## Running the `paper` profile on a GPU", "",
    "```bash",
    "make book PROFILE=paper RUN_ARGS=\"--device cuda\"        # or:",
    ".venv/bin/python -m neuroage_utils.run --profile paper --device cuda   # add --no-amp for float32 throughout",
    "```", "",
    "`--device cuda` is honoured by every chapter; on a machine without CUDA the run stops at once with a",
    "one-line error (exit 2). On the GPU:", "",
    "- **torch models** (MLPs, VAEs): the count matrix goes to the GPU once, as CSR when it does not fit dense",
    "  (checked against `torch.cuda.mem_get_info`, keeping half the free memory for the model), and each batch is",
    "  densified there; the shuffle is one permutation per epoch; no step waits for the host between batches;",
    "  bf16 autocast (`amp`, on in the `paper` and `quick` profiles, off with `--no-amp`; on a CPU with AMX, or with",
    "  AVX512-BF16 where a bf16 product measured at start-up is at least 1.3x float32) with the",
    "  likelihoods and KL in float32; fused Adam; deterministic kernels where torch has them.",
    "- **NMF and SVD** (their chapters, the summary's cross-validation, the real-donor models): the torch",
    "  versions above (`linalg_backend: \"auto\"`).",
    "- **Elastic nets** stay on scikit-learn: the batched device version holds one genes x genes Gram matrix per",
    "  fold and mixing ratio (about 50 GB in float64 at 17,658 genes), so it is used only where it is benchmarked.", "",
    "Every `results/<section>.json` records under `params` the device that ran (`cuda:0 (<GPU name>)`), `amp`",
    "(whether bf16 autocast ran) and `amp_requested`, and for the chapters with a factorisation",
    "`linalg_backend_used`; the status page lists the device per page.", "",
]


def _when(item: dict) -> list[str]:
    """A section's measurement date, as a line and a blank line (nothing when unknown)."""
    return [f"Measured {item['date_utc']} UTC.", ""] if item.get("date_utc") else []


def _scale(sc: dict) -> list[str]:
    """Memory and time against the number of cells (bench/bench_scale.py)."""
    if not sc.get("sizes"):
        return []
    drawn = [row.get("data", {}).get("sample_cells") for row in sc["sizes"]]
    sample = f"about {max(d for d in drawn if d):,}" if any(drawn) else "the profile's"
    out = ["## Memory against the number of cells (streamed data path)", "", *_when(sc),
           f"Simulated cohorts of {sc['genes']:,} genes written block by block, then read in blocks of 8,192 cells "
           f"(`bench/bench_scale.py`, each step in its own process, its own peak resident memory; {sc.get('cpu', '')}). "
           "*data*: load and validate (one pass, library sizes), per-gene moments of the log-normalised training "
           "cells, donor pseudobulk of the training and validation donors, and the per-donor sample of "
           f"{sample} cells the cell-level models of the quick profile fit on. *pseudobulk clock*: the baselines "
           "chapter's streamed clock "
           "(validated load, streamed pseudobulk of the training and validation donors, elastic net with the quick "
           "profile's grid and 5 donor-grouped folds, test donors predicted from their streamed pseudobulk). "
           "*`neuroage fit`*: the command `neuroage fit --data FILE --model pseudobulk_elastic_net --out DIR` on every "
           "donor (penalty tuned by inner CV, error by an outer 5-fold CV, clock directory written), which streams "
           f"a file above {STREAM_ABOVE_NNZ:,} stored values by itself and reads a smaller one into memory.", "",
           "| cells | non-zeros | file, GB | write: s, peak GB | data path: s, peak GB | pseudobulk clock: s, peak GB "
           "| clock test MAE | `neuroage fit`: s, peak GB | its CV MAE |",
           "|---|---|---|---|---|---|---|---|---|"]

    def cell(step):
        if not step or "error" in step:
            return _err(step) if step else "-"
        return f"{_f(step.get('wall_s'), 0)} s, {step.get('peak_rss_gb', '-')} GB"

    for row in sc["sizes"]:
        d = row.get("data", {})
        out.append(f"| {d.get('n_cells', row['millions'] * 1e6):,.0f} | {d.get('nnz', 0):,} | {row.get('file_gb', '-')} | "
                   f"{cell(row.get('write'))} | {cell(d)} | {cell(row.get('fit'))} | {row.get('fit', {}).get('test_mae', '-')} "
                   f"| {cell(row.get('cli'))}{'' if d.get('nnz', 0) > STREAM_ABOVE_NNZ else ' (in memory)'} "
                   f"| {(row.get('cli') or {}).get('cv_mae', '-')} |")
    by = {row["millions"]: row for row in sc["sizes"]}
    if 0.5 in by and 2.0 in by:
        parts = []
        for step, name in (("data", "data path"), ("fit", "pseudobulk clock"), ("cli", "`neuroage fit`")):
            lo, hi = (by[m].get(step, {}).get("peak_rss_gb") for m in (0.5, 2.0))
            cells = [by[m].get("data", {}).get("n_cells", m * 1e6) for m in (0.5, 2.0)]
            if lo and hi:
                per_cell = (hi - lo) * 2**30 / (cells[1] - cells[0])
                parts.append(f"{name} x{hi / lo:.2f} ({per_cell:.0f} bytes per added cell)")
        if parts:
            out += ["", "Peak memory at 2 million cells against 0.5 million: " + ", ".join(parts) + ". The matrix "
                    "never sits in memory; a streamed cohort holds a donor code and a float32 library size per cell "
                    "(5-6 bytes) and reads everything else from the file block by block."]
    out += ["", sc.get("note", ""), ""]
    return out


def render(results_path: Path, page: Path) -> str:
    out = ["# Benchmarks", ""]
    if not Path(results_path).exists():
        out += ["No benchmark results yet: `bench/results.json` is absent. Run `make bench` (a few minutes",
                "on 2 cores; `make bench BENCH_BOOK=1` also times the quick book from scratch) to measure",
                "and regenerate this page.", ""]
        text = "\n".join(out)
        page.write_text(text)
        return text
    r = json.loads(Path(results_path).read_text())
    out += [f"Measured by `make bench` on {r['date_utc']} UTC, {r['machine']} (1-minute load average at the start:",
            f"{r['load_average_1min_at_start']}; other processes sharing the CPU make every time an upper bound).",
            "Regenerate with `make bench`; this page is written from `bench/results.json`. Items a run skips keep",
            "their earlier results; each section below gives the date it was measured.", ""]
    vae = r.get("vae") or {}
    if vae:
        amp_runs = [vae.get(f"ours_{g}_bf16", {}).get("precision") for g in (2000, 17658)]
        native = ("this CPU multiplies bf16 in hardware, so our bf16 rows ran in bf16" if "bf16-mixed" in amp_runs else
                  f"bf16 {vae['bf16']}" if isinstance(vae.get("bf16"), str) else
                  "this CPU has no bf16 hardware, so our bf16 rows ran in float32 and SCVI's in emulated bf16")
        out += ["## Our Poisson VAE and scvi-tools' SCVI", "", *_when(vae),
                "SCVI {cite:p}`lopez2018scvi` as implemented in [scvi-tools](https://scvi-tools.org) "
                "{cite:p}`gayoso2022scvitools`.",
                "Same shape: encoder and decoder 2 x 256, latent 100, Poisson likelihood, same batch size, 2 torch",
                "threads, synthetic counts (10% non-zero) read from CSR per batch; best timed epoch after a",
                "warm-up. Each tool runs in float32 and, where the CPU has bf16 hardware, in bf16 mixed precision (ours: autocast, with the",
                "likelihood and KL in float32, only where the device multiplies bf16 in hardware; SCVI: Lightning's",
                f"`bf16-mixed`); {native}. Achieved FLOP/s counts the Linear layers only; the matmul reference is a",
                "batch x genes by genes x 256 product in the run's precision, timed in the same process.", "",
                "| genes | batch | precision | ours, cells/s | SCVI, cells/s | ratio | ours, GFLOP/s | matmul, GFLOP/s "
                "| share of matmul |",
                "|---|---|---|---|---|---|---|---|---|"]
        for genes, suffix in ((2000, ""), (17658, ""), (2000, "_bf16"), (17658, "_bf16")):
            o, s = vae.get(f"ours_{genes}{suffix}", {}), vae.get(f"scvi_{genes}{suffix}", {})
            if not o and not s:
                continue
            precision = "bf16 mixed" if suffix else "float32"
            out.append(f"| {genes:,} | {o.get('batch_size', '-')} | {precision} | {_f(o.get('cells_per_s'), 0)} | "
                       f"{_f(s.get('cells_per_s'), 0) if 'cells_per_s' in s else _err(s)} | "
                       f"{_f(vae.get(f'ratio_{genes}{suffix}'), 2)} | {_f(o.get('achieved_gflops'))} | "
                       f"{_f(o.get('matmul_first_layer_gflops'))} | {_f(o.get('fraction_of_matmul'), 2)} |")
        best = [(g, vae[f"ratio_best_{g}"]) for g in (2000, 17658) if isinstance(vae.get(f"ratio_best_{g}"), dict)]
        if best:
            def spread(g, b):  # every timed run of each tool at that precision: how stable the ratio is
                runs = {t: vae.get(f"{t}_{g}{'' if b[t] == 'fp32' else '_' + b[t]}", {}).get("cells_per_s_all", [])
                        for t in ("ours", "scvi")}
                if not all(runs.values()):
                    return ""
                return (f" (runs: ours {min(runs['ours']):,.0f}-{max(runs['ours']):,.0f}, SCVI "
                        f"{min(runs['scvi']):,.0f}-{max(runs['scvi']):,.0f} cells/s)")

            out += ["", "Each in the precision it runs fastest in, best run of each: " + "; ".join(
                f"{g:,} genes, ours ({b['ours']}) / SCVI ({b['scvi']}) = {b['ratio']:.2f}{spread(g, b)}"
                for g, b in best) + "."]
        s = vae.get("scvi_2000", {})
        if "tool" in s:
            out += ["", f"SCVI: {s['tool']}, torch {s['torch']} (its own virtualenv, `bench/requirements-scvi.txt`)."]
        out.append("")
    lin = r.get("linalg") or {}
    if "nmf" in lin:
        n, sv, en = lin["nmf"], lin.get("svd", {}), lin.get("enet", {})
        out += ["## Linear algebra: ours (torch) against scikit-learn", "", *_when(lin),
                f"Simulated counts, {lin['shape'][0]:,} cells x {lin['shape'][1]:,} genes "
                f"({lin['density']:.0%} non-zero), device `{lin['device']}`, {lin['torch_threads']} threads.", "",
                "| step | scikit-learn | ours | speed-up | agreement |", "|---|---|---|---|---|",
                f"| NMF k={n['k']}, raw counts | coordinate descent, {n['sklearn_cd']['iterations']} it: "
                f"{_f(n['sklearn_cd']['seconds'])} s, objective {_f(n['sklearn_cd']['objective'])} | accelerated HALS, "
                f"{n['torch_hals']['iterations']} it: {_f(n['torch_hals']['seconds'])} s, objective "
                f"{_f(n['torch_hals']['objective'])} | {_f(n['speedup'], 2)}x | objective ratio {n['objective_ratio']:.4f} |"]
        if sv:
            out.append(f"| SVD k={sv['k']}, z-scored log counts | ARPACK: {_f(sv['arpack_seconds'])} s | randomised, "
                       f"12 power iterations: {_f(sv['torch_randomised_seconds'])} s | {_f(sv['speedup'], 2)}x | "
                       f"top-10 singular values within {sv['max_rel_error_top10_singular_values']:.1e}, all within "
                       f"{sv['max_rel_error_all_singular_values']:.1%}; top-10 subspace min cosine "
                       f"{sv['min_cosine_top10_subspace']:.6f} |")
        if en:
            out.append(f"| elastic-net CV, {en['shape'][0]:,} x {en['shape'][1]} z-scores, 5 donor folds x 4 mixes x 20 "
                       f"penalties | coordinate descent, 1 thread: {_f(en['sklearn_seconds_1_thread'])} s | batched FISTA "
                       f"(float64): {_f(en['torch_fista_seconds'])} s | {_f(en['speedup'], 2)}x | same alpha and mix "
                       f"{'yes' if abs(en['sklearn_alpha_l1'][0] / en['torch_alpha_l1'][0] - 1) < 1e-6 and en['sklearn_alpha_l1'][1] == en['torch_alpha_l1'][1] else 'NO'}; "
                       f"best CV MSE {_f(en['best_cv_mse_sklearn'], 3)} vs {_f(en['best_cv_mse_torch'], 3)} |")
        out += ["", "scikit-learn stays the default wherever it is faster on the CPU; the torch versions are for a GPU",
                "(`fit_nmf(..., backend=\"torch\")`, `fit_svd(..., backend=\"torch\")`, "
                "`device_linalg.elastic_net_cv`). The chapters choose with the profile option `linalg_backend`",
                "(`\"auto\"`: torch on CUDA; on a CPU, HALS for NMF (faster there too, at an objective within 0.1% of scikit-learn's) and ARPACK for the SVD).", ""]
    elif lin:
        out += ["## Linear algebra", "", f"Not measured: {_err(lin)}", ""]
    out += _ddp_section(r.get("ddp"))
    d = r.get("data_path") or {}
    if d:
        out += ["## Paper-scale data path", "", *_when(d)]
        if "peak_rss_gb" in d:
            out += [f"{d['cells']:,} cells x {d['genes']:,} genes ({d['nnz']:,} non-zeros; cell fraction "
                    f"{d['cell_fraction']}): simulate {d['simulate_s']} s, read + validate + split "
                    f"{d['load_validate_split_s']} s, normalise + scale {d['normalise_scale_s']} s; "
                    f"**peak memory {d['peak_rss_gb']} GB** (budget 8 GB).", ""]
        else:
            out += [f"Not measured: {_err(d)}", ""]
    out += _scale(r.get("scale") or {})
    b = r.get("book")
    out += ["## Quick book from scratch", ""]
    if b and "wall_s" in b and "error" not in b:
        how = f" ({b['command']}, commit {b.get('commit', '?')})" if b.get("command") else ""
        total = (f"; all its processes together (the runner, a notebook kernel and its fitting workers) peaked "
                 f"at {b['peak_pss_total_gb']} GB of proportional set size (budget 4 GB)" if "peak_pss_total_gb" in b else "")
        from neuroage_utils.report.benchfacts import facts  # the one wording of the book's time, on every page

        f = facts(r)
        out += [f"Measured {f['bench_book_date']} UTC at commit `{f['bench_book_commit']}` (the commit of the book you "
                "are reading is on the [build status](../executed/status.md) page).", "",
                f"{f['bench_book_time']} wall{how}, peak {b['peak_rss_gb']} GB in one process{total}; notebooks: "
                + ", ".join(f"{k} {v} s" for k, v in b["notebook_runtime_s"].items()), ""]
    else:
        out += ["Not measured in this run (`make bench BENCH_BOOK=1` times it; about 10 minutes)."
                + (f" Error: {b['error']}" if b and "error" in b else ""), ""]
    pp = r.get("paper_profile")
    if pp:
        g = pp["gpu"]
        out += ["## Expected run times of the `paper` profile", "",
                "Nothing below is a measured paper-profile run. **CPU (extrapolated)**: rates measured above on this",
                "machine, scaled to 189,423 cells x 17,658 genes (models fit on about "
                f"{pp['train_fraction']:.0%} of the cells, the training donors). **GPU (estimate)**: counted FLOPs or",
                f"bytes divided by assumed rates of one {g['name']}: {g['fp32_flops'] / 1e12:.1f} TFLOP/s fp32,",
                f"{g['bf16_flops'] / 1e12:.0f} TFLOP/s with bf16 autocast, sparse products at "
                f"{g['spmm_bytes_per_s'] / 1e12:.2f} TB/s. Both omit validation passes, element-wise work and",
                "evaluation, so both are lower bounds.", "",
                "| chapter | work | TFLOP | CPU, s (extrapolated) | CPU basis | GPU, s (estimate) | GPU basis |",
                "|---|---|---|---|---|---|---|"]
        for row in pp["rows"]:
            cpu = row["cpu_s_extrapolated"]
            cpu_txt = "-" if cpu is None else (f"{cpu:,} ({cpu / 3600:,.1f} h)" if cpu > 3600 else f"{cpu:,}")
            out.append(f"| {row['chapter']} | {row['work']} | {_f(row['tflop'])} | {cpu_txt} | {row['cpu_basis']} | "
                       f"{_f(row['gpu_s_estimate'])} | {row['gpu_basis']} |")
        out += ["", f"Total: CPU about {pp['cpu_total_s_extrapolated'] / 86400:,.1f} days (extrapolated); one GPU about "
                f"{pp['gpu_total_s_estimate'] / 60:,.1f} min (estimate, bf16 for the networks; the VAE chapter alone "
                f"would take about {pp['vae_chapter_gpu_s_estimate_fp32'] / 60:,.0f} min in fp32). The GPU figure assumes "
                "the data stay on the device (no per-batch host copies) and will be replaced by measured times when a",
                "GPU runs `make book PROFILE=paper`.", ""]
    out += GPU_RUN
    text = "\n".join(out)
    page.write_text(text)
    return text


def _ddp_section(ddp) -> list[str]:
    """Data-parallel VAE epochs (bench_ddp.py): cells per second per rank at 1 and 2 ranks."""
    if not ddp:
        return []
    out = ["## Data-parallel training (torch.distributed)", "", *_when(ddp)]
    if "runs" not in ddp:
        return out + [f"Not measured: {_err(ddp)}", ""]
    single = ddp["runs"]["single_process"]
    out += [f"{ddp['model']}, {ddp['genes']:,} genes, {ddp['cells']:,} cells, global batch {ddp['batch_size']:,}, "
            f"best of {ddp['epochs_timed']} timed epochs after a warm-up, {ddp['cores']} cores (1-minute load average "
            f"{ddp['load_average_1min_start']} at the start, {ddp['load_average_1min_end']} at the end). The ranks are "
            "started by `torchrun` (gloo) and share the cores, so on this machine the table measures the cost of",
            "data parallelism (gradient all-reduce, BatchNorm over the global batch, reduced sums), not a speed-up:",
            "that needs a core, a GPU or a machine per rank.", "",
            "Wall times on a shared machine are upper bounds; processor time summed over the ranks is what other",
            "processes inflate least, so the last column (processor time per cell against one process) is the overhead.", "",
            "| run | ranks x threads | precision | best epoch, s | cells/s per rank | cells/s in all | epoch time vs one process "
            "| cells per CPU-second | CPU time vs one process |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| one process, no torch.distributed | 1 x {single['threads_per_rank']} | {single['precision']} | "
            f"{_f(single['epoch_seconds_best'], 2)} | {_f(single['cells_per_s_per_rank'], 0)} | "
            f"{_f(single['cells_per_s_per_rank'], 0)} | 1.00 | {_f(single.get('cells_per_cpu_s'), 0)} | 1.00 |"]
    for key, run in sorted(ddp["runs"].items()):
        if not key.startswith("ranks_"):
            continue
        out.append(f"| DDP, {run['world_size']} rank(s) | {run['world_size']} x {run['threads_per_rank']} | {run['precision']} | "
                   f"{_f(run['epoch_seconds_best'], 2)} | {_f(run['cells_per_s_per_rank'], 0)} | "
                   f"{_f(run['cells_per_s_total'], 0)} | {_f(run['epoch_time_vs_single_process'], 2)} | "
                   f"{_f(run.get('cells_per_cpu_s'), 0)} | {_f(run.get('cpu_time_vs_single_process'), 2)} |")
    return out + ["", "Reproduce: `.venv/bin/python bench/bench_ddp.py` (or `make bench`).", ""]


if __name__ == "__main__":
    args = sys.argv[1:]
    render(Path(args[0]) if args else BENCH / "results.json",
           Path(args[1]) if len(args) > 1 else BENCH.parent / "book" / "benchmarks.md")
