"""The rgi console script: demo prints a table in which RGI beats the MSE baseline."""

from __future__ import annotations

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
