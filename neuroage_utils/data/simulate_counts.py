"""The simulator's counts: exact negative-binomial draws, one random stream per block of 128 cells.

``_sample_block`` draws the counts of one block; :func:`sample_blocks` yields a cohort's blocks in
order from a thread pool with a bounded number of blocks in flight, so the in-memory simulator
(which assembles them into one CSR) and the block writer (which appends them to a file) share the
one code path and give the same cells. The maths is on the book's page *The simulated cohort*.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

from neuroage_utils.data.simulate_model import _rng

__all__ = ["sample_blocks", "assemble_csr"]

# Cells share one random stream per block of this many cells, whatever ``chunk_cells`` is, so the
# matrix does not depend on how it was chunked. 128 x 17,658 float32 is ~9 MB: a block's arrays fit
# in a CPU's last-level cache, which makes the elementwise passes several times faster.
_RNG_BLOCK = 128
# Non-zero entries with an NB mean above this are drawn by gamma-Poisson instead of the inverse CDF;
# inverse-CDF counts still unresolved after _MAX_STEPS steps (far tail) go to scipy's ppf.
_LARGE_MEAN = 5.0
_MAX_STEPS = 64


def _nb_positive_quantile(u: np.ndarray, p0: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Inverse CDF of NB(mean mu, inverse dispersion theta) at ``u`` > P(0) = ``p0``: a count >= 1.

    With q = mu / (mu + theta), pmf(k + 1) = pmf(k) (k + theta) / (k + 1) q, and the count is
    1 + #{k >= 1 : CDF(k) < u}. The recursion counts in place and compacts the still-running
    entries only when half of them have finished (most counts are 1 or 2); the rare far tail
    (past ``_MAX_STEPS``) goes to scipy's ``nbinom.ppf``. float32 throughout: the CDF is exact to
    ~1e-6, far below anything a count matrix can show.
    """
    q = mu / (mu + theta)
    pmf = p0 * theta * q  # pmf(1)
    cdf = p0 + pmf
    out = np.ones(len(u), dtype=np.float32)
    idx = np.flatnonzero(cdf < u)
    pmf, cdf, q, th, uu = pmf[idx], cdf[idx], q[idx], theta[idx], u[idx]
    steps = np.full(len(idx), 2.0, dtype=np.float32)  # 1 + #{k : CDF(k) < u} so far (k = 1 holds)
    below = np.ones(len(idx), dtype=bool)
    for k in range(1, _MAX_STEPS):
        if not idx.size:
            break
        pmf *= (k + th) / (k + 1.0) * q
        cdf += pmf
        np.less(cdf, uu, out=below)
        steps += below
        n_running = int(below.sum())
        if n_running <= len(idx) // 2:
            out[idx] = steps
            idx, pmf, cdf, q, th, uu, steps = (a[below] for a in (idx, pmf, cdf, q, th, uu, steps))
            below = np.ones(len(idx), dtype=bool)
    out[idx] = steps
    tail = idx[below] if idx.size else idx
    if tail.size:
        t64, m64 = theta[tail].astype(np.float64), mu[tail].astype(np.float64)
        out[tail] = np.maximum(stats.nbinom.ppf(u[tail].astype(np.float64), t64, t64 / (t64 + m64)), 1.0)
    return out


def _nb_positive_draw(rng: np.random.Generator, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """NB(mu, theta) conditioned on > 0, as gamma-Poisson draws with zeros redrawn.

    Used for large means, where P(0) is tiny (one round almost always suffices) and the inverse-CDF
    recursion would need ~mu steps.
    """
    out = np.zeros(len(mu), dtype=np.float32)
    todo = np.arange(len(mu))
    while todo.size:
        draw = rng.poisson(rng.gamma(theta[todo], mu[todo] / theta[todo]))
        out[todo] = draw
        todo = todo[draw == 0]
    return out


@dataclass(frozen=True)
class _Design:
    """What every block of cells needs to draw its counts."""

    donor_idx: np.ndarray
    type_idx: np.ndarray
    library: np.ndarray  # float32 L_i
    scores: np.ndarray  # float32 (cells x programs)
    profiles: np.ndarray  # float32 p[d, t, g] (donors x types x kept genes)
    program_genes: np.ndarray  # kept-gene columns touched by any cell-state program
    programs: np.ndarray  # float32 (programs x program_genes)
    program_offset: np.ndarray  # float32 ||W_g||^2 / 2 on program_genes
    theta: np.ndarray  # float32 per kept gene
    seed: int


def _sample_block(design: _Design, block: int):
    """Counts of the cells of one random-stream block: CSR pieces and the per-gene sum of means.

    mu[i, g] = L_i p[d(i), t(i), g] exp(s_i . W_g - ||W_g||^2 / 2) (the offset makes the program
    term average 1 over cells). Each entry gets one U ~ Uniform(0, 1) from its block's stream; the
    count is 0 when U <= P(0) = (1 + mu / theta)^-theta, else the NB inverse CDF at U (means above
    ``_LARGE_MEAN``: a gamma-Poisson draw conditioned on > 0, from the same stream). Both are exact
    NB draws, and the ~90% of entries that are zero cost one log, one exp and one uniform each.
    """
    start = block * _RNG_BLOCK
    stop = min(start + _RNG_BLOCK, len(design.donor_idx))
    mu = design.profiles[design.donor_idx[start:stop], design.type_idx[start:stop]]
    mu *= design.library[start:stop, None]
    if design.program_genes.size:
        # s_i . W_g - offset as K rank-one updates: far faster than a BLAS call with K ~ 4.
        scores = design.scores[start:stop]
        state = np.negative(np.broadcast_to(design.program_offset, (stop - start, design.programs.shape[1])))
        for k in range(design.programs.shape[0]):
            state += scores[:, k : k + 1] * design.programs[k]
        mu[:, design.program_genes] *= np.exp(state, out=state)
    mu_sum = mu.sum(axis=0, dtype=np.float64)
    # P(0) = exp(-theta log(1 + mu / theta)); log(1 + x) instead of log1p (5x faster here) loses
    # only ~1e-7 absolute in P(0), the resolution of a float32 uniform anyway.
    p0 = mu * (1.0 / design.theta)
    p0 += 1.0
    np.log(p0, out=p0)
    p0 *= -design.theta
    np.exp(p0, out=p0)
    rng = _rng(design.seed, "counts", block)
    uniform = rng.random(mu.shape, dtype=np.float32)
    nonzero = uniform > p0
    flat = np.flatnonzero(nonzero)
    cols = (flat % mu.shape[1]).astype(np.int32)
    mu_nz, theta_nz = mu.ravel()[flat], design.theta[cols]
    large = mu_nz > _LARGE_MEAN
    counts = np.empty(len(flat), dtype=np.float32)
    small = ~large
    counts[small] = _nb_positive_quantile(uniform.ravel()[flat[small]], p0.ravel()[flat[small]], mu_nz[small], theta_nz[small])
    counts[large] = _nb_positive_draw(rng, mu_nz[large].astype(np.float64), theta_nz[large].astype(np.float64))
    return nonzero.sum(axis=1), cols, counts, mu_sum


def _sample_unit(design: _Design, blocks: range):
    """A work unit (a chunk of whole blocks), processed block by block so arrays stay cache-sized."""
    parts = [_sample_block(design, b) for b in blocks]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.sum([p[3] for p in parts], axis=0),
    )


def make_design(cells: dict, log_profiles: np.ndarray, programs: np.ndarray, theta: np.ndarray, seed: int) -> _Design:
    """The per-cell design and per-gene constants every block needs (``programs``: programs x kept genes)."""
    program_genes = np.flatnonzero((programs != 0).any(axis=0))
    programs = programs[:, program_genes]
    return _Design(
        donor_idx=cells["donor_idx"],
        type_idx=cells["type_idx"],
        library=np.exp(cells["log_lib"]).astype(np.float32),
        scores=cells["scores"].astype(np.float32),
        profiles=np.exp(log_profiles),
        program_genes=program_genes,
        programs=programs.astype(np.float32),
        program_offset=(0.5 * (programs**2).sum(axis=0)).astype(np.float32),
        theta=theta.astype(np.float32),
        seed=int(seed),
    )


def n_threads_available() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def sample_blocks(design: _Design, chunk_cells: int = 4096, n_threads: int | None = None):
    """Yield ``(row_nnz, cols, counts, mu_sum)`` per work unit of whole 128-cell blocks, in cell order.

    numpy releases the GIL in its ufuncs and random fills, so threads over units use every core; at
    most two units per thread are in flight, so a slow consumer (a writer) holds memory flat. The
    per-block streams make the result independent of ``chunk_cells`` and ``n_threads``.
    """
    n_cells = len(design.donor_idx)
    n_blocks = -(-n_cells // _RNG_BLOCK)
    per_unit = max(1, -(-int(chunk_cells) // _RNG_BLOCK))  # whole blocks per work unit
    units = [range(b, min(b + per_unit, n_blocks)) for b in range(0, n_blocks, per_unit)]
    n_threads = n_threads_available() if n_threads is None else max(1, int(n_threads))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        pending = deque()
        todo = iter(units)
        for unit in todo:
            pending.append(pool.submit(_sample_unit, design, unit))
            if len(pending) >= 2 * n_threads:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_sample_unit, design, nxt))
            yield result


def assemble_csr(pieces: list, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """Concatenate ``(row_nnz, cols, counts)`` pieces into one CSR, freeing each piece as it is copied
    (peak ~ 1x nnz); int64 indices once the non-zeros pass 2^31 - 1."""
    nnz = sum(len(piece[1]) for piece in pieces)
    index_dtype = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_rows + 1, dtype=index_dtype)
    np.cumsum(np.concatenate([piece[0] for piece in pieces]), out=indptr[1:])
    indices = np.empty(nnz, dtype=index_dtype)
    data = np.empty(nnz, dtype=np.float32)
    pos = 0
    while pieces:
        _, cols, counts = pieces.pop(0)
        indices[pos : pos + len(cols)] = cols
        data[pos : pos + len(cols)] = counts
        pos += len(cols)
    X = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)
    X.has_sorted_indices = True  # np.nonzero walks rows in order, columns ascending
    return X
