"""The ``neuroage`` command: fit a clock, apply it to new donors, or build the book.

::

    neuroage fit --data FILE.h5ad --model KEY --out CLOCK_DIR [--donor-key K] [--age-key K]
                 [--cell-type-key K] [--control-key K --control-value V] [--device auto|cpu|cuda] [--seed N]
                 [--stream]
    neuroage fit --data FILE.h5ad --model vae|mlp --out CLOCK_DIR [--params JSON] [--nproc N]
                 [--nnodes M --node-rank K --master HOST:PORT]   # torch clocks (clock/torch_clock.py)
    neuroage predict --clock CLOCK_DIR --data FILE.h5ad --out PREDICTIONS.csv [--donor-key K] [--age-key K]
                 [--cell-type-key K] [--control-key K --control-value V] [--stream]
    neuroage book [runner arguments]     # the same as python -m neuroage_utils.run [...]

Files above ``data.stream.STREAM_ABOVE_NNZ`` stored values (or with ``--stream``) are read block by
block, memory flat in the cells (:mod:`neuroage_utils.clock.streamed`: what is exact, what is sampled).
Bad input exits with status 2 and a one-line reason as the last line of stderr; nothing is written.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

from neuroage_utils.errors import DataValidationError

__all__ = ["main", "read_h5ad"]


def read_h5ad(path):
    """An .h5ad read into memory, or a one-line :class:`DataValidationError`."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"data file {path} does not exist: pass the path of an .h5ad file")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py / anndata raise many types for a broken file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataValidationError(f"cannot read {path} as AnnData ({type(exc).__name__}: {first}): "
                                  "pass an .h5ad written by anndata or scanpy") from None


def _keys(p: argparse.ArgumentParser, defaults: bool) -> None:
    p.add_argument("--donor-key", default="donor_id" if defaults else None, help="obs column of donor ids")
    p.add_argument("--age-key", default="age" if defaults else None, help="obs column of ages in years")
    p.add_argument("--cell-type-key", default=None,
                   help="obs column of cell types: one clock per type beside the pooled one (fit), "
                        "one row per donor and type (predict)")
    p.add_argument("--control-key", default=None, help="obs column that marks controls")
    p.add_argument("--control-value", default=None, help="the value of --control-key that marks controls")
    p.add_argument("--stream", action="store_const", const=True, default=None,
                   help="read the file block by block (automatic above 5e8 stored values): memory flat in the cells")


def _parser() -> argparse.ArgumentParser:
    from neuroage_utils.clock.models import MODELS
    from neuroage_utils.clock.torch_clock import TORCH_MODELS

    p = argparse.ArgumentParser(prog="neuroage", description="Single-cell age clocks: fit, predict, book.")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a clock on every donor given (only controls with --control-key)")
    fit.add_argument("--data", required=True, help=".h5ad with raw counts (X or layers['counts'])")
    fit.add_argument("--model", required=True, choices=sorted(MODELS) + sorted(TORCH_MODELS),
                     help="the clock's model (vae, mlp: torch clocks scored on held-out donors)")
    fit.add_argument("--out", required=True, help="the clock directory to write")
    _keys(fit, defaults=True)
    fit.add_argument("--device", default="auto", help="auto, cpu or cuda (the elastic nets run on the CPU)")
    fit.add_argument("--seed", type=int, default=0)
    torch_args = fit.add_argument_group("torch clocks (--model vae or mlp)")
    torch_args.add_argument("--params", default="{}", help='estimator settings as JSON, e.g. \'{"epochs": 20}\'')
    torch_args.add_argument("--nproc", type=int, default=1,
                            help="processes per machine: 1 trains here; N > 1 data-parallel under torchrun "
                                 "(one per GPU with --device cuda: NCCL; CPU processes: gloo)")
    torch_args.add_argument("--nnodes", type=int, default=1, help="machines (torchrun --nnodes): run the command on each")
    torch_args.add_argument("--node-rank", type=int, default=0, help="this machine's number, 0 .. nnodes - 1")
    torch_args.add_argument("--master", default=None, help="node 0's host:port (several machines)")
    pred = sub.add_parser("predict", help="apply a clock: one row per donor with the age gaps")
    pred.add_argument("--clock", required=True, help="a directory written by neuroage fit")
    pred.add_argument("--data", required=True, help=".h5ad of the donors to predict")
    pred.add_argument("--out", required=True, help="the predictions .csv to write")
    _keys(pred, defaults=False)
    sub.add_parser("book", help="build the book: arguments go to python -m neuroage_utils.run", add_help=False)
    return p


def _fit(args) -> int:
    from neuroage_utils.clock.torch_clock import TORCH_MODELS, fit_command

    if args.model in TORCH_MODELS:  # VAE / MLP: trained once (optionally data-parallel), scored on held-out donors
        return fit_command(args)
    from neuroage_utils.clock.clock import Clock
    from neuroage_utils.data.stream import should_stream
    from neuroage_utils.train.device import resolve_device
    from neuroage_utils.train.workers import worker_count

    device = resolve_device(args.device)
    options = dict(model=args.model, donor_key=args.donor_key, age_key=args.age_key,
                   cell_type_key=args.cell_type_key, control_key=args.control_key, control_value=args.control_value,
                   device=device, seed=args.seed, settings={"workers": worker_count(device)})
    if should_stream(args.data, args.stream):
        from neuroage_utils.clock.streamed import fit_streamed

        clock = fit_streamed(args.data, **options)
    else:
        clock = Clock.fit(read_h5ad(args.data), data_path=args.data, **options)
    out = clock.save(args.out)
    for name, member in clock.members.items():
        info = member.info
        lo, hi = info["cv_mae_ci95"]
        print(f"{args.model} [{name}]: {info['n_donors']} donors, CV MAE {info['cv_mae']:.2f} years "
              f"(95% CI {lo:.2f}-{hi:.2f}), {info['n_nonzero']} genes")
    sample = clock.training.get("cell_sample")
    if sample:
        print(f"streamed: fitted on a per-donor sample of {sample['cells']:,} of the {sample['of_cells']:,} cells "
              "(training.json: cell_sample)")
    print(f"clock written to {out}")
    return 0


def _predict(args) -> int:
    from neuroage_utils.clock.clock import Clock
    from neuroage_utils.data.stream import should_stream
    from neuroage_utils.results import atomic_write_text

    clock = Clock.load(args.clock)
    keys = dict(donor_key=args.donor_key, age_key=args.age_key, cell_type_key=args.cell_type_key,
                control_key=args.control_key, control_value=args.control_value)
    from neuroage_utils.clock.torch_clock import TorchClock

    # the torch clocks predict in memory (their streamed prediction is not written yet)
    if should_stream(args.data, args.stream) and not isinstance(clock, TorchClock):
        from neuroage_utils.clock.streamed import predict_streamed

        table = predict_streamed(clock, args.data, **keys)
    else:
        table = clock.predict(read_h5ad(args.data), **keys)
    atomic_write_text(args.out, table.to_csv(index=False))
    print(f"{len(table)} rows written to {args.out} (age gap corrected on {table['correction'].iloc[0]})")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "book":
        return subprocess.call([sys.executable, "-m", "neuroage_utils.run", *argv[1:]])
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = _fit(args) if args.command == "fit" else _predict(args)
            error = None
        except DataValidationError as exc:
            status, error = 2, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    from neuroage_utils.clock.alignment import GeneOverlapWarning

    for w in caught:  # libraries' warnings as usual, then ours as one line each, the error last
        if not issubclass(w.category, GeneOverlapWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for w in caught:
        if issubclass(w.category, GeneOverlapWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)  # last line on stderr
    return status


if __name__ == "__main__":
    sys.exit(main())
