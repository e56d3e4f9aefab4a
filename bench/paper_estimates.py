"""Expected run time of the ``paper`` profile, per chapter: on this CPU (extrapolated from the rates
measured by ``make bench``) and on one H100-class GPU (estimated from FLOP counts and a stated rate).

Nothing here is a measurement of the paper profile itself: CPU rows scale measured small-scale rates
to the paper's sizes ("extrapolated"); GPU rows divide counted work by an assumed device rate
("estimate"). Work that the counts leave out (validation passes, element-wise ops, Python overhead,
evaluation, plotting) makes both lower bounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PAPER_CELLS, PAPER_GENES, PAPER_NNZ = 189_423, 17_658, 411_000_000  # nnz: bench/README.md (simulated cohort)
TRAIN_FRACTION = 49 / 69  # models fit on the training donors' cells (approximated by the donor share)

#: Assumed sustained rates of one H100 SXM (stated, not measured): FP32 dense training at 40% of its
#: 67 TFLOP/s FP32 peak; bf16 autocast at 20% of its 989 TFLOP/s dense bf16 peak; sparse products
#: bound by 3.35 TB/s of memory bandwidth at 50% efficiency, 12 bytes per non-zero per product.
GPU = {"name": "NVIDIA H100 SXM (assumed rates)", "fp32_flops": 0.4 * 67e12, "bf16_flops": 0.2 * 989e12,
       "spmm_bytes_per_s": 0.5 * 3.35e12, "bytes_per_nnz": 12}


#: Memory passes over a batch x genes float32 tensor per training step of a VAE (densify, log1p/scale,
#: likelihood forward and backward, optimiser-free): an assumption, bounding the element-wise time.
ELEMENTWISE_PASSES = 20


def elementwise_seconds(cells_epochs: float, genes: int = PAPER_GENES) -> float:
    return ELEMENTWISE_PASSES * 4 * genes * cells_epochs / GPU["spmm_bytes_per_s"]


def vae_flops_per_cell(hidden, latent, genes=PAPER_GENES, age_hidden=(20, 20)) -> float:
    """Training FLOPs per cell of AgeVAE's Linear layers (see bench_vae_throughput)."""
    import torch

    from bench_vae_throughput import linear_train_flops_per_cell
    from neuroage_utils.models.vae import AgeVAE

    with torch.device("meta"):  # shapes only, no memory
        module = AgeVAE(genes, hidden=tuple(hidden), latent=latent, age_hidden=tuple(age_hidden))
    return linear_train_flops_per_cell(module)


def mlp_flops_per_cell(widths, n_in) -> float:
    sizes = [n_in, *widths, 1]
    w = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 4 * sum(w) + 2 * sum(w[1:])


def estimate(results: dict) -> dict:
    """Per-chapter rows from ``bench/results.json`` contents (measured CPU rates)."""
    from neuroage_utils.profiles import section_params

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    n_fit = PAPER_CELLS * TRAIN_FRACTION
    vae_big = (results.get("vae") or {}).get("ours_17658") or {}
    cpu_train_flops = vae_big.get("achieved_gflops", 0) * 1e9 or None
    lin = results.get("linalg") or {}
    rows = []

    def row(chapter, work, flops, cpu_s, gpu_s, cpu_basis, gpu_basis):
        rows.append({"chapter": chapter, "work": work, "tflop": None if flops is None else round(flops / 1e12, 1),
                     "cpu_s_extrapolated": None if cpu_s is None else round(cpu_s),
                     "gpu_s_estimate": None if gpu_s is None else round(gpu_s, 1),
                     "cpu_basis": cpu_basis, "gpu_basis": gpu_basis})

    data = results.get("data_path") or {}
    t_data = sum(data.get(k, 0) for k in ("simulate_s", "write_s", "load_validate_split_s", "normalise_scale_s")) or None
    row("data", "simulate, write, read, validate, split, normalise", None, t_data, t_data,
        "measured at paper scale (bench_data_path.py)", "host work: same as the CPU")

    svd = section_params("paper", "svd")
    q, n_iter = svd["n_components"] + 100, 12  # device_linalg.zscore_svd defaults
    products = 2 * n_iter + 3
    flops = products * 2 * PAPER_NNZ * q * TRAIN_FRACTION
    svd_m = lin.get("svd") or {}
    shape = lin.get("shape") or [1, 1]
    cpu = svd_m.get("arpack_seconds", 0) * (PAPER_NNZ * TRAIN_FRACTION) / (shape[0] * shape[1] * lin.get("density", 1)) if svd_m else None
    gpu = products * PAPER_NNZ * TRAIN_FRACTION * GPU["bytes_per_nnz"] / GPU["spmm_bytes_per_s"]
    row("svd", f"truncated SVD k={svd['n_components']} of the z-scored CSR", flops, cpu, gpu,
        "ARPACK time x non-zeros ratio", f"randomised SVD, {products} sparse products, memory-bound")

    base = section_params("paper", "baselines")
    mlp = sum(mlp_flops_per_cell(c["hidden"], PAPER_GENES) for c in base["mlp_grid"]) * n_fit * base["mlp_epochs"]
    n_l1, n_alpha, folds = len(base["elastic_net"]["l1_ratios"]), base["elastic_net"]["n_alphas"], base["elastic_net"]["n_splits"]
    gram = (folds + 1) * 2 * n_fit * PAPER_GENES**2
    fista = n_l1 * folds * n_alpha * 300 * 2 * PAPER_GENES**2  # ~300 FISTA iterations per penalty (assumed)
    en = lin.get("enet") or {}
    cpu_en = None
    if en:
        n, p = en["shape"]
        cpu_en = en["sklearn_seconds_1_thread"] * (n_fit / n) * (PAPER_GENES / p) ** 2
    cpu = (mlp / cpu_train_flops if cpu_train_flops else 0) + (cpu_en or 0)
    mlp_epochs = len(base["mlp_grid"]) * base["mlp_epochs"]
    gpu = mlp / GPU["bf16_flops"] + (gram + fista) / GPU["fp32_flops"] + elementwise_seconds(n_fit * mlp_epochs) / 4
    row("baselines", "MLP grid (4 configs x 30 epochs) + cell elastic net (Gram CV path)", mlp + gram + fista,
        cpu or None, gpu, "VAE FLOP rate for the MLPs; sklearn enet time x n p^2 ratio",
        f"MLPs bf16 (+{ELEMENTWISE_PASSES // 4} memory passes per batch); Gram + FISTA fp32")

    nmf = section_params("paper", "nmf")
    k, iters = nmf["n_components"], nmf["max_iter"]
    nm = lin.get("nmf") or {}
    per_iter = 4 * n_fit * PAPER_GENES * k + 2 * 3 * 2 * (n_fit + PAPER_GENES) * k * k
    hals_iters = (nm.get("torch_hals") or {}).get("iterations", iters)
    flops = per_iter * hals_iters + mlp_flops_per_cell(nmf["mlp"]["hidden"], k) * n_fit * nmf["mlp_epochs"]
    cpu = None
    if nm:
        cpu = nm["sklearn_cd"]["seconds"] / nm["sklearn_cd"]["iterations"] * iters * (n_fit * PAPER_GENES) / (shape[0] * shape[1])
    gpu = per_iter * hals_iters / GPU["fp32_flops"] + hals_iters * 6 * k * 4 * 10e-6  # + kernel launches
    row("nmf", f"NMF k={k} ({hals_iters} HALS iterations on the GPU, {iters} CD on the CPU) + MLP", flops, cpu, gpu,
        "sklearn CD s/iteration x cells*genes ratio", "HALS fp32 + 10 us per launched kernel")

    vae = section_params("paper", "vae")
    total = 0.0
    for cfg in vae["gaussian_grid"] + vae["poisson_grid"]:
        total += vae_flops_per_cell(cfg["hidden"], cfg["latent"], age_hidden=cfg["age_hidden"]) * n_fit * cfg["epochs"]
    epochs = sum(c["epochs"] for c in vae["gaussian_grid"] + vae["poisson_grid"])
    row("vae", f"{len(vae['gaussian_grid'])} Gaussian + {len(vae['poisson_grid'])} Poisson VAEs, {epochs} epochs",
        total, total / cpu_train_flops if cpu_train_flops else None,
        total / GPU["bf16_flops"] + elementwise_seconds(n_fit * epochs),
        "measured VAE FLOP/s at 17,658 genes", f"bf16 autocast rate + {ELEMENTWISE_PASSES} memory passes per batch")
    total_fp32_vae = total / GPU["fp32_flops"] + elementwise_seconds(n_fit * epochs)

    dae = section_params("paper", "dae")
    total = sum(vae_flops_per_cell(c["hidden"], c["latent"], age_hidden=c["age_hidden"]) * n_fit * c["epochs"]
                for c in dae["grid"])
    epochs = sum(c["epochs"] for c in dae["grid"])
    row("dae", f"{len(dae['grid'])} denoising VAEs, {epochs} epochs", total,
        total / cpu_train_flops if cpu_train_flops else None,
        total / GPU["bf16_flops"] + elementwise_seconds(n_fit * epochs),
        "measured VAE FLOP/s at 17,658 genes", f"bf16 autocast rate + {ELEMENTWISE_PASSES} memory passes per batch")
    cpu_total = sum(r["cpu_s_extrapolated"] or 0 for r in rows)
    gpu_total = sum(r["gpu_s_estimate"] or 0 for r in rows)
    return {"gpu": GPU, "train_fraction": round(TRAIN_FRACTION, 3), "rows": rows,
            "cpu_total_s_extrapolated": round(cpu_total), "gpu_total_s_estimate": round(gpu_total, 1),
            "vae_chapter_gpu_s_estimate_fp32": round(total_fp32_vae, 1)}
