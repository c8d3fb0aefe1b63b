"""The rgi console script: demo prints a table in which RGI beats the MSE baseline."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from flows.cli import main


@pytest.mark.integration  # the demo: 300-step solves on the shipped prior
def test_demo_table_shows_rgi_beating_mse(capsys):
    assert main(["demo", "--core", "--iterations", "300"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("scattered", "block") and len(parts) == 7:
            rows[(parts[0], parts[2])] = (float(parts[3]), float(parts[4]))
    assert len(rows) == 6, out
    for corruption in ("scattered", "block"):
        assert rows[(corruption, "rgi")][0] > rows[(corruption, "mse")][0], out  # PSNR
    assert rows[("block", "rgi")][1] > rows[("block", "mse")][1], out  # mask IoU


@pytest.mark.integration  # subprocesses
def test_console_script_help_and_errors():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout and "priors" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_priors_lists_or_says_none(capsys):
    assert main(["priors"]) == 0
    assert capsys.readouterr().out.strip()


def test_clean_passes_mask_tv_to_the_flow_options(monkeypatch, tmp_path):
    import flows.clean
    from flows.cli import main

    seen = {}

    def fake_run_clean(source, catalog, prior, options):
        seen["options"] = options
        return {"images_ok": 1, "images_error": 0, "images_skipped": 0, "images_per_second": 1.0,
                "config_hash": "x", "top": [], "report_uri": ""}

    monkeypatch.setattr(flows.clean, "run_clean", fake_run_clean)
    assert main(["clean", str(tmp_path), "--catalog", str(tmp_path / "c"), "--mask-tv", "0"]) == 0
    assert seen["options"].mask_tv == 0.0
    assert main(["clean", str(tmp_path), "--catalog", str(tmp_path / "c")]) == 0
    assert seen["options"].mask_tv is None  # None: the prior's default


def _subparser(name):
    from flows.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_solver_flags_of_evaluate_and_calibrate_come_from_the_options_model(command):
    from flows.options import SolveOptions

    actions = {a.dest: a for a in _subparser(command)._actions if a.help != argparse.SUPPRESS}
    for name in ("iterations", "n_init", "sizing", "seed", "device") + (("lam",) if command == "evaluate" else ()):
        description = SolveOptions.model_fields[name].description.split(" (unset:")[0].rstrip(".")
        assert actions[name].help.startswith(description), (name, actions[name].help)
    assert actions["lam"].option_strings == ["--lambda"] and actions["sizing"].choices == ("auto", "resize", "tile")
    assert actions["n_init"].type is int and actions["lam"].type is float


def test_evaluate_and_calibrate_defaults_are_as_documented():
    ev = _subparser("evaluate").parse_args(["data", "--prior", "p"])
    assert (ev.iterations, ev.n_init, ev.n_starts, ev.lam, ev.sizing, ev.batch_size, ev.seed, ev.device) == (
        None, None, None, None, "auto", 32, 0, "auto")
    ca = _subparser("calibrate").parse_args(["images", "--prior", "p"])
    assert (ca.iterations, ca.n_init, ca.lam, ca.sizing, ca.method, ca.seed, ca.device) == (
        1000, 200, None, "auto", "rgi", 0, "auto")
    assert "default 1000: cheaper" in {a.dest: a for a in _subparser("calibrate")._actions}["iterations"].help


def test_fit_is_a_deprecated_spelling_of_sizing(capsys):
    args = _subparser("evaluate").parse_args(["data", "--prior", "p", "--fit", "tile"])
    assert args.sizing == "tile" and "--fit is deprecated; use --sizing" in capsys.readouterr().err
    assert _subparser("calibrate").parse_args(["i", "--prior", "p", "--fit", "resize"]).sizing == "resize"
    assert "--fit" not in _subparser("calibrate").format_help()


@pytest.fixture
def calibrations(monkeypatch):
    """Which calibration ``rgi calibrate`` runs, and with what arguments (none is run)."""
    import flows.cli

    seen = []
    monkeypatch.setattr(flows.cli, "_cmd_calibrate", lambda args: seen.append(("out", args)) or 0)
    monkeypatch.setattr(flows.cli, "_cmd_calibrate_prior", lambda args: seen.append(("into_prior", args)) or 0)
    return seen


def test_calibrate_writes_a_json_or_into_the_prior_each_with_its_own_defaults(calibrations, capsys):
    assert main(["calibrate", "imgs", "--prior", "p"]) == 0
    assert main(["calibrate", "imgs", "--prior", "p.safetensors", "--into-prior", "--texture-stats", "8",
                 "--search-iterations", "2000"]) == 0
    (out, a), (into, b) = calibrations
    assert (out, a.out, a.rounds, a.fpr) == ("out", "calibration.json", 4, 0.01)
    assert (into, b.prior, b.images, b.rounds, b.images_n, b.texture_stats, b.search_iterations, b.search_n_init) == (
        "into_prior", "p.safetensors", "imgs", 6, 32, 8, 2000, 1000)
    assert main(["calibrate", "imgs", "--prior", "p", "--segmenter-steps", "5"]) == 2  # a prior's detector, no prior
    assert "--segmenter-steps: only with --into-prior" in capsys.readouterr().err
    assert main(["calibrate", "imgs", "--prior", "p", "--into-prior", "--fpr", "0.05", "--lambda", "0.1"]) == 2
    assert "--fpr, --lambda: only with --out" in capsys.readouterr().err
    assert main(["calibrate", "imgs", "--prior", "p", "--search-iterations", "10"]) == 2
    assert "--search-iterations: only with --into-prior" in capsys.readouterr().err
    assert main(["calibrate", "imgs", "--prior", "p", "--switch-triage-images", "256"]) == 2
    assert "--switch-triage-images: only with --into-prior" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", "imgs", "--prior", "p", "--into-prior", "--out", "c.json"])
    assert len(calibrations) == 2
    assert main(["calibrate", "imgs", "--prior", "p", "--into-prior", "--switch-triage-images", "256"]) == 0
    assert (calibrations[-1][1].switch_triage_images, calibrations[-1][1].triage_keep) == (256, 0.2)


def test_calibrate_prior_still_works_and_says_it_is_deprecated(calibrations, capsys):
    assert main(["calibrate-prior", "p.safetensors", "imgs", "--rounds", "2", "--segmenter-steps", "3"]) == 0
    (mode, args), = calibrations
    assert (mode, args.prior, args.images, args.rounds, args.segmenter_steps, args.images_n) == (
        "into_prior", "p.safetensors", "imgs", 2, 3, 32)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "calibrate-prior is deprecated; use rgi calibrate IMAGES --prior PRIOR --into-prior" in err
