"""The ``kikuchipy-neural`` command line.

Subcommands are registered with :func:`command`; adding one is writing one
decorated function::

    @command("name", "one-line help", [arg("path"), arg("--flag", action="store_true")])
    def _name(args: argparse.Namespace) -> int:
        print(args.path)
        return 0

Heavy imports (torch, kikuchipy) happen inside the subcommands, so that
``kikuchipy-neural --help`` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import shutil
import signal as os_signal  # "signal" names the EBSD signals here
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMMANDS", "arg", "command", "main"]


@dataclass
class Command:
    """A registered subcommand."""

    name: str
    help: str
    arguments: list[tuple[tuple, dict]] = field(default_factory=list)
    run: Callable[[argparse.Namespace], int] | None = None
    description: str | None = None


#: Registered subcommands, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def arg(*names: str, **kwargs: Any) -> tuple[tuple, dict]:
    """One ``ArgumentParser.add_argument`` call, for :func:`command`."""
    return names, kwargs


def command(name: str, help: str, arguments: Sequence[tuple[tuple, dict]] = ()):
    """Register the decorated ``run(args) -> exit status`` as subcommand ``name``."""

    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, list(arguments), run, run.__doc__)
        return run

    return register


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kikuchipy-neural",
        description="Fit, decode and inspect neural-field models of EBSD scans.",
    )
    from kikuchipy_neural import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for names, kwargs in cmd.arguments:
            p.add_argument(*names, **kwargs)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kikuchipy-neural`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except CLIError as err:
        print(f"kikuchipy-neural {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C while a fit trains returns its model (saved, not reached
        # here); before training or during a decode it ends the command, and
        # model files and decoded patterns are never left half written.
        print(f"kikuchipy-neural {args.command}: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, OSError, ValueError, TypeError) as err:
        # Bad input (a missing file, a corrupted model, an unknown option):
        # the message says what is wrong; a traceback would hide it.
        print(f"kikuchipy-neural {args.command}: error: {err}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------- helpers


def parse_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; the value is a Python literal
    (number, tuple, None, True/False) when it parses as one, else a string."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise CLIError(f"--option expects key=value, got {text!r}")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    return key, parsed


def _rank(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"rank must be an integer or 'auto', got {text!r}"
        ) from None


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _largest_arrays(stored: dict[str, int], most: int = 4) -> str:
    """Where a model file's bytes go: its largest arrays, as stored."""
    largest = sorted(stored.items(), key=lambda kv: -kv[1])[:most]
    rest = sum(stored.values()) - sum(n for _, n in largest)
    text = ", ".join(f"{name} {_human_bytes(n)}" for name, n in largest)
    return text + (f", others {_human_bytes(rest)}" if rest else "")


def _distinct_decimals(a: float, b: float, most: int = 4) -> tuple[str, str]:
    """``a`` and ``b`` with one decimal, or as many more (up to ``most``) as
    it takes to tell them apart: a refit "not kept" because it raised the
    MAE should not read "1.1 -> 1.1"."""
    for decimals in range(1, most + 1):
        left, right = f"{a:.{decimals}f}", f"{b:.{decimals}f}"
        if left != right:
            return left, right
    return f"{a:.1f}", f"{b:.1f}"


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP (a batch system's time limit, ``kill``, a closed
    terminal) stop the fit like Ctrl-C does: it keeps its best model, which
    is then saved, and writes its checkpoint. Without this they end the
    process and hours of training are lost."""
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(os_signal, n)]

    def interrupt(signum, frame):
        raise KeyboardInterrupt(os_signal.Signals(signum).name)

    try:
        previous = {
            n: os_signal.signal(getattr(os_signal, n), interrupt) for n in names
        }
    except ValueError:  # not the main thread: leave the handlers alone
        previous = {}
    try:
        yield
    finally:
        for n, handler in previous.items():
            os_signal.signal(getattr(os_signal, n), handler)


def _check_out_folder(path: str, flag: str = "--out") -> None:
    """Raise before hours of fitting or decoding, not when writing: the
    folder exists and is writable, the name (and its temporary file's)
    fits the file system."""
    from kikuchipy_neural.safe_files import check_destination

    try:
        check_destination(path, flag)
    except (OSError, ValueError) as err:
        raise CLIError(str(err)) from None


# Marks a decoded pattern file or store as written by `decode`, which
# --overwrite then may replace: an HDF5 root attribute, or a file in a
# zarr store's folder.
_DECODED_MARK = "kikuchipy_neural_decoded"


def _mark_decoded(path) -> None:
    """Mark ``path`` (just written by :func:`_decode`) as ours."""
    from kikuchipy_neural import __version__

    if path.is_dir():
        (path / f".{_DECODED_MARK}").write_text(f"{__version__}\n")
        return
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs[_DECODED_MARK] = str(__version__)


def _decoded_by_us(path) -> bool:
    """Whether ``path`` is a file or store that `decode` wrote."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return (path / f".{_DECODED_MARK}").is_file()
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return _DECODED_MARK in f.attrs
    except OSError:
        return False


def _check_overwrite(out, overwrite: bool) -> None:
    """Refuse to replace anything that `decode` did not write: --overwrite
    once deleted a folder of the user's that had the output's name, and
    everything in it."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise CLIError(f"{out} exists; pass --overwrite to replace it")
    if not _decoded_by_us(out):
        kind = "folder" if out.is_dir() else "file"
        raise CLIError(
            f"{out} is a {kind} that kikuchipy-neural decode did not write; "
            "--overwrite replaces only its own output. Remove or rename it "
            "yourself, or choose another --out"
        )


def _refuse_our_files(path: str) -> None:
    """A model file or checkpoint given as the scan to fit: say what it is
    (kikuchipy's reader says "If the file format is supported, please
    report this error")."""
    import zipfile

    import h5py

    if not os.path.isfile(path):
        return
    if zipfile.is_zipfile(path):
        raise CLIError(
            f"{path} is a training checkpoint, not a scan: continue its fit with "
            "--resume CHECKPOINT and the scan it was fitted to"
        )
    if not h5py.is_hdf5(path):
        return
    from kikuchipy_neural.io.model_file import FORMAT_NAME

    with contextlib.suppress(OSError, KeyError, RuntimeError):
        with h5py.File(path, "r") as f:
            value = f.attrs.get("format")
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "replace")
        if value == FORMAT_NAME:
            raise CLIError(
                f"{path} is a kikuchipy-neural model file, not a scan: decode it "
                "with `kikuchipy-neural decode MODEL --out PATTERNS.h5`, or fit the "
                "scan it was fitted to"
            )


def _read_scan(path: str, lazy: bool):
    import kikuchipy as kp

    _refuse_our_files(path)

    signal = kp.load(path, lazy=lazy)
    if isinstance(signal, list):
        raise CLIError(
            f"{path} holds {len(signal)} signals; write the scan to fit to its own file"
        )
    if signal.axes_manager.signal_dimension != 2:
        raise CLIError(f"{path} does not hold 2D patterns: {signal}")
    signal.set_signal_type("NeuralEBSD")
    return signal


# ------------------------------------------------------------------- commands

_PRECISION_HELP = (
    "float32 (bit-exact), float16 (default) or int8 (8-bit bases and weight matrices)"
)


@command(
    "fit",
    "fit a neural field to a scan and save the model",
    [
        arg(
            "scan",
            help="pattern file that kikuchipy.load reads (h5ebsd, .hspy, .zspy, ...)",
        ),
        arg("--out", "-o", required=True, help="model file to write (.h5)"),
        arg(
            "--formulation", default="factorized", help="factorized (default) or joint"
        ),
        arg(
            "--rank",
            type=_rank,
            default="auto",
            help="number of bases, or auto (default)",
        ),
        arg(
            "--variance",
            type=float,
            default=None,
            help="choose the rank explaining this variance share",
        ),
        arg(
            "--max-steps",
            type=int,
            default=None,
            help="stop after this many optimiser steps",
        ),
        arg(
            "--time-budget",
            type=float,
            default=None,
            help="stop after this many seconds",
        ),
        arg(
            "--device",
            default=None,
            help="cpu, cuda, cuda:1, ... (default: cuda if available)",
        ),
        arg("--seed", type=int, default=0, help="random seed (default 0)"),
        arg("--precision", default="float16", help=_PRECISION_HELP),
        arg(
            "--balanced-bases",
            action="store_true",
            help="with --precision int8: quantise the bases with steps "
            "inversely proportional to their coefficients' RMS (a smaller "
            "file for a little more error)",
        ),
        arg(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any fit option, e.g. --option siren_width=256 (repeatable)",
        ),
        arg(
            "--lazy",
            action="store_true",
            help="read the scan lazily (for scans larger than memory)",
        ),
        arg(
            "--checkpoint", default=None, help="checkpoint file written during the fit"
        ),
        arg("--resume", default=None, help="continue from this checkpoint"),
        arg("--quiet", "-q", action="store_true", help="no progress bar, no summary"),
    ],
)
def _fit(args: argparse.Namespace) -> int:
    """Fit a neural field to an EBSD scan and save it as one model file.

    Every fit option (see kikuchipy_neural.training.FitOptions) is available
    through --option KEY=VALUE; values are Python literals (numbers, tuples,
    None, True/False) or plain strings.

    Ctrl-C, SIGTERM and SIGHUP (a batch job's time limit, kill, a closed
    terminal) stop the fit early: the best model so far is saved to --out,
    and --checkpoint, if given, lets --resume continue the fit later.
    """
    from kikuchipy_neural.io.model_file import check_save_arguments

    try:
        # Before a fit that may take hours: what model.save would refuse
        # (--precision, --balanced-bases).
        check_save_arguments(args.precision, args.formulation, args.balanced_bases)
    except ValueError as err:
        raise CLIError(f"cannot save the model as asked: {err}") from None
    options = dict(parse_option(o) for o in args.option)
    if args.checkpoint is not None:
        options["checkpoint"] = args.checkpoint
    if args.variance is not None and args.rank != "auto":
        raise CLIError("give either --rank or --variance, not both")
    if isinstance(args.rank, int) and args.rank < 2:
        raise CLIError(
            f"--rank must be at least 2 (mean pattern + 1 basis), got {args.rank}"
        )
    # Check the options before reading a possibly large scan.
    from kikuchipy_neural.training.options import FitOptions

    FitOptions.from_kwargs(args.formulation, **options)
    _check_out_folder(args.out)
    if options.get("checkpoint") is not None:
        _check_out_folder(os.fspath(options["checkpoint"]), "--checkpoint")
    signal = _read_scan(args.scan, args.lazy)
    with _terminate_as_interrupt():
        model = signal.fit_neural(
            formulation=args.formulation,
            rank=args.rank,
            variance=args.variance,
            max_steps=args.max_steps,
            time_budget=args.time_budget,
            device=args.device,
            seed=args.seed,
            show_progressbar=not args.quiet,
            resume=args.resume,
            **options,
        )
    path = model.save(
        args.out, precision=args.precision, balanced_bases=args.balanced_bases
    )
    if not args.quiet:
        print(f"{model}\nsaved to {path}")
        _print_summary(_summary(path))
    return 0


@command(
    "decode",
    "decode a model file into a pattern file",
    [
        arg("model", help="model file written by fit (or NeuralEBSDModel.save)"),
        arg(
            "--out",
            "-o",
            required=True,
            help="pattern file: .h5 (kikuchipy h5ebsd), .hspy or .zspy",
        ),
        arg(
            "--upsample",
            type=float,
            default=1.0,
            metavar="F",
            help="grid F times finer along x and y (default 1)",
        ),
        arg(
            "--sharpen-boundaries",
            action="store_true",
            help="decode the dominant grain's pattern where the field blends two "
            "grains (for indexing; see NeuralEBSDModel.query)",
        ),
        arg(
            "--dtype",
            default="float32",
            help="float32 (default), float16, uint16, uint8, ... (integers rounded and clipped)",
        ),
        arg("--device", default="cpu", help="device to decode on (default cpu)"),
        arg("--overwrite", action="store_true", help="replace an existing output file"),
        arg("--quiet", "-q", action="store_true", help="no progress bar"),
    ],
)
def _decode(args: argparse.Namespace) -> int:
    """Decode a model into patterns on the training grid, or on a grid
    --upsample times finer, and write them chunk by chunk (memory stays
    bounded for any map size)."""
    from pathlib import Path

    import dask.array as da
    import numpy as np

    from kikuchipy_neural.io.lazy_decoding import load
    from kikuchipy_neural.safe_files import remove_stale_temporaries, temporary_path

    out = Path(args.out)
    _check_overwrite(out, args.overwrite)
    _check_out_folder(args.out)
    try:
        dtype = np.dtype(args.dtype)
    except TypeError:
        raise CLIError(f"unknown --dtype {args.dtype!r}") from None
    if dtype.kind not in "fiu":
        raise CLIError(f"--dtype must be a float or integer type, got {dtype}")
    signal = load(args.model, lazy=True, device=args.device)
    if args.upsample != 1 or args.sharpen_boundaries:
        signal = signal.upsample(
            args.upsample, lazy=True, sharpen_boundaries=args.sharpen_boundaries
        )
    if dtype != np.float32:
        data = signal.data
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            data = da.clip(da.round(data), info.min, info.max)
        signal.data = data.astype(dtype)
    nav = signal.axes_manager.navigation_shape[::-1]
    if not args.quiet:
        print(
            f"decoding {int(np.prod(nav))} patterns, navigation shape {nav}, to {out}"
        )
    from hyperspy.defaults_parser import preferences

    previous = preferences.General.show_progressbar
    preferences.General.show_progressbar = not args.quiet
    # Written under a temporary name and renamed when complete: an interrupted
    # or failed decode leaves no truncated file under the user's name (and
    # the next decode removes the file a killed one left).
    remove_stale_temporaries(out, "partial")
    partial = temporary_path(out, "partial")
    try:
        # The writers draw dask's bar whatever HyperSpy's preference says
        # (kikuchipy's h5ebsd writer passes its keywords to h5py too, so
        # show_progressbar=False cannot reach it): -q silences stdout.
        with contextlib.ExitStack() as stack:
            if args.quiet:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            signal.save(str(partial), overwrite=True)
        _mark_decoded(partial)
        # Checked again: the output may have appeared while decoding.
        _check_overwrite(out, args.overwrite)
        if out.is_dir():  # a store this command wrote (checked above)
            shutil.rmtree(out)
        os.replace(partial, out)
    finally:
        preferences.General.show_progressbar = previous
        if partial.is_dir():
            shutil.rmtree(partial)
        elif partial.exists():
            partial.unlink()
    return 0


@command(
    "info",
    "describe a model file: size, rank, compression ratio, geometry, training",
    [
        arg("model", help="model file"),
        arg("--json", action="store_true", help="print the summary as JSON"),
    ],
)
def _info(args: argparse.Namespace) -> int:
    """Print what a model file holds. The compression ratio compares the
    file with the raw patterns of its training grid in the training data's
    dtype."""
    summary = _summary(args.model)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _summary(path) -> dict[str, Any]:
    from kikuchipy_neural.io.model_file import file_summary

    return file_summary(path)


def _print_summary(s: dict[str, Any]) -> None:
    field_cfg = s["field"]
    arch = ", ".join(
        f"{k}={v}"
        for k, v in field_cfg.items()
        if k not in ("formulation", "pattern_shape")
    )
    ny, nx = s["scan_shape"]
    h, w = s["pattern_shape"]
    t = s["training"]
    rows = [
        (
            "file",
            f"{s['path']} ({_human_bytes(s['file_bytes'])}, {s['file_bytes']} bytes)",
        ),
        (
            "format",
            f"version {s['format_version']}, written by kikuchipy-neural {s['package_version']} on {s['created']}",
        ),
        ("precision", s["precision"]),
        ("formulation", f"{s['formulation']} ({arch})"),
        ("rank", str(s["rank"]) if s["rank"] is not None else "-"),
        (
            "parameters",
            f"{s['n_network_parameters']} network + {s['n_basis_values']} basis values",
        ),
        (
            "compression",
            f"{s['compression_ratio']:.1f}x smaller than the raw {s['raw_dtype']} patterns "
            f"({_human_bytes(s['raw_bytes'])})",
        ),
        ("stored", _largest_arrays(s["stored_bytes"])),
        (
            "scan",
            f"{ny} x {nx} points"
            + (" (explicit positions)" if s["scattered"] else "")
            + f", step {s['step'][0]:g} x {s['step'][1]:g} {s['units']}, origin ({s['origin'][0]:g}, {s['origin'][1]:g})",
        ),
        (
            "patterns",
            f"{h} x {w} px, intensities {s['intensity_range'][0]:g} .. {s['intensity_range'][1]:g}",
        ),
    ]
    det = s["detector"]
    if det is not None:
        rows.append(
            (
                "detector",
                f"{det['shape'][0]} x {det['shape'][1]} px, binning {det['binning']}, px size "
                f"{det['px_size']:g} um, tilt {det['tilt']:g}, sample tilt {det['sample_tilt']:g}, "
                f"PC array {tuple(det['pc_shape'])} (Bruker)",
            )
        )
    if s["phases"]:
        rows.append(("phases", ", ".join(name or "(unnamed)" for name in s["phases"])))
    if t["steps"] is not None:
        seconds = f"{t['seconds']:.0f} s" if t["seconds"] is not None else "?"
        mae = (
            f"{t['best_val_mae']:.1f} counts" if t["best_val_mae"] is not None else "-"
        )
        rows.append(
            (
                "training",
                f"{t['steps']} steps in {seconds}, stopped: {t['stop_reason']}, best validation MAE {mae}",
            )
        )
    refit = t.get("refit_bases")
    if refit:
        outcome = "kept" if refit["applied"] else f"not kept ({refit.get('reason')})"
        if refit.get("validation_mae_before") is not None:
            before, after = _distinct_decimals(
                refit["validation_mae_before"], refit["validation_mae_after"]
            )
            outcome += f", the final model's validation MAE {before} -> {after} counts"
        rows.append(
            ("bases refit", f"least squares on {refit['points']} points, {outcome}")
        )
    validation = t.get("validation")
    if validation:
        rows.append(("held out", validation_summary(validation)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def validation_summary(report: dict[str, Any]) -> str:
    """One line of :attr:`NeuralEBSDModel.validation`: MAE of the field and
    the baselines on the held-out points, and the verdict."""
    names = {"field": "field", "interpolation": "interpolation", "pca": "PCA-denoised"}
    parts = [
        f"{label} {report['mae'][key]:.1f}"
        for key, label in names.items()
        if report["mae"].get(key) is not None
    ]
    verdict = (
        "worse than " + " and ".join(names[k] for k in report["worse_than"]) + "!"
        if report["worse_than"]
        else "no baseline better"
    )
    return (
        f"MAE on {report['n_points']} points it never trained on: "
        + ", ".join(parts)
        + f" counts ({verdict})"
    )


@command(
    "demo",
    "run the whole pipeline on an embedded synthetic map and write a report",
    [
        arg(
            "--out",
            "-o",
            default="kikuchipy-neural-demo",
            help="report folder (default ./kikuchipy-neural-demo)",
        ),
        arg(
            "--quick",
            action="store_true",
            help="a tiny map and network: a smoke test in about a minute",
        ),
        arg(
            "--seed",
            type=int,
            default=0,
            help="seed of the map and the fit (default 0)",
        ),
        arg("--quiet", "-q", action="store_true", help="no progress output"),
    ],
)
def _demo(args: argparse.Namespace) -> int:
    """Simulate a recrystallised-like Ni map (64x64 scan of 60x60 patterns,
    known truth), fit the factorized field, reconstruct, Hough-index measured
    and reconstructed patterns, and write figures, a summary table
    (report.md, report.html, summary.json) and the model file into --out.
    A few minutes on 2 CPU cores."""
    from dataclasses import replace

    from kikuchipy_neural.demo import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    summary = run_demo(
        args.out, replace(config, seed=args.seed), progress=not args.quiet
    )
    if not args.quiet:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
