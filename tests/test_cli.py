"""Tests of the ``kikuchipy-neural`` command line (fit, decode, info, demo)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kikuchipy_neural import cli
from kikuchipy_neural.io import model_file, principal_axes
from kikuchipy_neural.io.model_file import file_summary


@pytest.fixture(scope="module")
def model_path(small_model, tmp_path_factory):
    return small_model.save(
        tmp_path_factory.mktemp("cli") / "model.h5", precision="float32"
    )


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("fit", "decode", "info"):
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), name
    assert cli.main([]) == 2


def test_a_subcommand_is_one_registered_function(capsys):
    @cli.command("echo-test", "print an argument", [cli.arg("word")])
    def _echo(args):
        print(args.word.upper())
        return 0

    try:
        assert cli.main(["echo-test", "kikuchi"]) == 0
        assert capsys.readouterr().out.strip() == "KIKUCHI"
    finally:
        del cli.COMMANDS["echo-test"]


def test_info_prints_the_compression_ratio(small_model, model_path, capsys):
    assert cli.main(["info", str(model_path)]) == 0
    out = capsys.readouterr().out
    # 12 x 12 points of 40 x 40 uint16 patterns = 460800 bytes.
    ratio = 12 * 12 * 40 * 40 * 2 / model_path.stat().st_size
    assert f"{ratio:.1f}x smaller than the raw uint16 patterns" in out
    assert "12 x 12 points" in out and "40 x 40 px" in out
    assert "precision    float32" in out
    # Where the bytes go: the arrays as stored, the largest first.
    stored = file_summary(model_path)["stored_bytes"]
    line = next(row for row in out.splitlines() if row.startswith("stored "))
    for name in ("network", "bases"):
        assert f"{name} {cli._human_bytes(stored[name])}" in line
    assert line.index("network") < line.index("bases")  # 116 vs 21 kB
    refit = small_model.info["refit_bases"]
    assert (
        f"bases refit  least squares on {refit['points']} points, "
        f"{'kept' if refit['applied'] else 'not kept'}"
    ) in out
    before, after = cli._distinct_decimals(
        refit["validation_mae_before"], refit["validation_mae_after"]
    )
    assert f"validation MAE {before} -> {after} counts" in out
    # The held-out report of the fit, against its baselines.
    report = small_model.validation
    line = next(row for row in out.splitlines() if row.startswith("held out "))
    assert f"MAE on {report['n_points']} points it never trained on" in line
    assert f"field {report['mae']['field']:.1f}" in line
    assert f"interpolation {report['mae']['interpolation']:.1f}" in line
    assert ("worse than" in line) == bool(report["worse_than"])
    assert cli.main(["info", str(model_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["raw_bytes"] == 460800
    assert summary["file_bytes"] == model_path.stat().st_size


def test_info_of_a_corrupted_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    assert cli.main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "not a readable HDF5 file" in err and "Traceback" not in err


def test_decode_upsampled_to_h5ebsd(small_model, model_path, tmp_path, capsys):
    import kikuchipy as kp

    out = tmp_path / "patterns.h5"
    args = ["decode", str(model_path), "--out", str(out), "--upsample", "2", "-q"]
    assert cli.main(args) == 0
    s = kp.load(out)
    assert s.axes_manager.navigation_shape == (23, 23)
    assert [a.scale for a in s.axes_manager.navigation_axes] == [0.5, 0.5]
    expected = small_model.query(small_model.geometry.grid_xy(2))
    np.testing.assert_allclose(s.data, expected, rtol=1e-6, atol=1e-2)
    # No silent overwrite.
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err
    # Integer output: rounded counts.
    assert (
        cli.main(
            [
                "decode",
                str(model_path),
                "--out",
                str(tmp_path / "u16.h5"),
                "--dtype",
                "uint16",
                "-q",
            ]
        )
        == 0
    )
    u16 = kp.load(tmp_path / "u16.h5")
    assert u16.data.dtype == np.uint16
    np.testing.assert_array_equal(
        u16.data, np.clip(np.round(small_model.reconstruct()), 0, 65535)
    )


def test_an_interrupted_decode_leaves_no_file(
    model_path, tmp_path, monkeypatch, capsys
):
    import kikuchipy as kp
    from kikuchipy.signals import EBSD

    save = EBSD.save

    def interrupted(self, filename, *args, **kwargs):
        save(self.inav[:1], filename, *args, **kwargs)  # a partial file
        raise KeyboardInterrupt

    out = tmp_path / "patterns.h5"
    monkeypatch.setattr(EBSD, "save", interrupted)
    assert cli.main(["decode", str(model_path), "--out", str(out), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(EBSD, "save", save)
    for name in ("patterns.h5", "patterns.hspy"):
        args = ["decode", str(model_path), "--out", str(tmp_path / name), "-q"]
        assert cli.main(args) == 0
        assert cli.main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "patterns.h5",
        "patterns.hspy",
    ]
    assert kp.load(out).axes_manager.navigation_shape == (12, 12)


def test_decode_with_sharpened_boundaries(model_path, tmp_path):
    import kikuchipy as kp

    from kikuchipy_neural import load_model

    out = tmp_path / "sharp.h5"
    args = ["decode", str(model_path), "--out", str(out), "--sharpen-boundaries"]
    assert cli.main([*args, "-q"]) == 0
    model = load_model(model_path)
    grid = model.geometry.grid_xy()
    expected = model.query(grid, sharpen_boundaries=True)
    np.testing.assert_allclose(kp.load(out).data, expected, rtol=1e-5, atol=1e-2)
    assert not np.allclose(expected, model.query(grid), atol=1.0)


def test_fit_from_a_pattern_file(small_map, tmp_path, capsys):
    from kikuchipy_neural import load_model

    scan = tmp_path / "scan.h5"
    small_map.save(scan)
    out = tmp_path / "fitted.h5"
    code = cli.main(
        [
            "fit", str(scan), "--out", str(out), "--rank", "3", "--max-steps", "15",
            "--precision", "int8", "--balanced-bases", "--option", "siren_width=16",
            "--option", "siren_layers=2", "--option", "eval_every=5",
            "--option", "band_fraction_range=(0.1, 0.4)",
        ]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "saved to" in captured.out and "compression" in captured.out
    assert "fit_neural" in captured.err  # the progress bar
    model = load_model(out)
    assert model.rank == 3
    assert model.field.config["width"] == 16
    assert model.options["band_fraction_range"] == [0.1, 0.4]
    assert model.info["steps"] == 15
    assert model.info["model_file"]["precision"] == "int8"
    # --balanced-bases: the field in its principal axes (its coefficients
    # over the scan of mean 0 and variance 1, up to the 8-bit network's
    # rounding), the bases' rounding errors (step times coefficient RMS, 1)
    # adding up to twice the variance of 256 codes over each basis's range.
    mean, cov = principal_axes.coefficient_moments(model)
    np.testing.assert_allclose(mean, 0, atol=0.05)
    np.testing.assert_allclose(cov, np.eye(len(mean)), atol=0.05)
    steps = model_file._read_verified(out).arrays["bases_step"]
    own = np.ptp(model.field.bases.detach().numpy(), axis=1) / 255
    assert np.sum(steps**2) == pytest.approx(2 * np.sum(own**2), rel=0.05)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
def test_a_terminated_fit_saves_its_model(small_map, tmp_path):
    # A batch system's time limit sends SIGTERM: the fit stops as on Ctrl-C
    # and the CLI still writes the model (and the checkpoint).
    from kikuchipy_neural import load_model

    scan, out, ckpt = tmp_path / "scan.h5", tmp_path / "m.h5", tmp_path / "fit.ckpt"
    small_map.save(scan)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "kikuchipy_neural.cli", "fit", str(scan),
            "--out", str(out), "--rank", "3", "--checkpoint", str(ckpt), "-q",
            "--max-steps", "1000000", "--option", "siren_width=16",
            "--option", "eval_every=5", "--option", "patience=1000000",
            "--option", "warm_start_patience=1000000",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ckpt.exists(), "the fit never wrote its first checkpoint"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    model = load_model(out)
    assert model.info["stop_reason"] == "interrupted"
    assert model.info["steps"] >= 5


def test_fit_rejects_unknown_options_before_reading(tmp_path, capsys):
    code = cli.main(
        [
            "fit",
            str(tmp_path / "missing.h5"),
            "--out",
            "m.h5",
            "--option",
            "siren_wdth=8",
        ]
    )
    assert code == 1
    assert "did you mean 'siren_width'" in capsys.readouterr().err
    assert cli.main(["fit", "x.h5", "--out", "m.h5", "--option", "novalue"]) == 2
    assert cli.main(["fit", "x.h5", "--out", "m.h5", "--precision", "int4"]) == 2
    assert cli.main(["fit", "x.h5", "--out", "m.h5", "--balanced-bases"]) == 2


def test_a_missing_output_folder_fails_before_the_work(model_path, tmp_path, capsys):
    # Found before reading the scan (which does not exist either), not after
    # the fit when the model is written.
    out = str(tmp_path / "missing" / "m.h5")
    assert cli.main(["fit", str(tmp_path / "scan.h5"), "--out", out]) == 2
    assert "no folder" in capsys.readouterr().err
    assert cli.main(["decode", str(model_path), "--out", out]) == 2
    assert "no folder" in capsys.readouterr().err


def test_close_values_are_printed_apart():
    assert cli._distinct_decimals(684.1, 693.8) == ("684.1", "693.8")
    assert cli._distinct_decimals(1.1013, 1.1021) == ("1.101", "1.102")
    assert cli._distinct_decimals(1.104, 1.121) == ("1.10", "1.12")
    assert cli._distinct_decimals(2.0, 2.0) == ("2.0", "2.0")


def test_parse_option():
    assert cli.parse_option("siren_width=128") == ("siren_width", 128)
    assert cli.parse_option("lr=1e-3") == ("lr", 1e-3)
    assert cli.parse_option("sampler=coordinates") == ("sampler", "coordinates")
    assert cli.parse_option("pixels-per-position=None") == ("pixels_per_position", None)
    # Literals only: nothing is evaluated.
    assert cli.parse_option("x=__import__('os')") == ("x", "__import__('os')")


def test_cli_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "kikuchipy_neural.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("kikuchipy-neural ")


def test_demo_writes_its_report_and_beats_the_noise(tmp_path):
    # The README's main command, on its tiny map (--quick): every figure and
    # table lands in --out, and the reconstruction is far closer to the
    # noise-free truth than the measured patterns (measured 2026-12-01:
    # 77.6 vs 696.1 counts) and indexes to the true orientations.
    out = tmp_path / "report"
    assert cli.main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    for name in ("report.html", "report.md", "orientations.png", "model.h5"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    floor = summary["noise floor: measured vs truth (counts)"]
    assert summary["MAE vs truth (counts)"] < 0.25 * floor
    assert summary[">= 4 deg, reconstructed indexing vs truth (%)"] <= 5.0
    from kikuchipy_neural import load_model

    assert load_model(out / "model.h5").rank == summary["rank"]
