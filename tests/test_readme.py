"""README.md stays true: its Python example runs as written, and every `rgi ...` line of its CLI block runs with
its placeholders (IMAGES, CATALOG, N, ...) filled by small real values: brick crops cut from
`rgi export-dataset`, a temporary catalog, a few steps."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import drop_gpu_limit
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def cli_lines() -> list[str]:
    return [line.strip() for block in blocks("bash") for line in block.splitlines() if line.startswith("rgi ")]


@pytest.mark.integration  # a 50-step solve on the shipped prior: ~40 s on 2 cores
def test_python_example_runs_as_written():
    code = blocks("python")
    assert code, "README.md has no python example"
    ns: dict = {}
    for i, snippet in enumerate(code):
        exec(compile(snippet, f"README.md[python {i}]", "exec"), ns)  # noqa: S102
    result, images = ns["result"], ns["images"]
    assert result.restored.shape == images.shape
    assert result.anomaly_map.shape == result.mask.shape == (images.shape[0], 1, *images.shape[2:])
    assert result.score.shape == (images.shape[0],)
    assert set(result.diagnostics[0].losses) >= {"fidelity", "mask_l1"}


def expand(line: str, values: dict) -> list[str]:
    """The CLI arguments of a README line: optional parts kept, the first of `a|b|c` alternatives taken,
    placeholders (upper-case words) filled from ``values`` (a value may be a callable, evaluated when needed)."""
    args = []
    for token in shlex.split(line, comments=True)[1:]:
        if not token.startswith("SELECT"):
            token = token.strip("[]")
            if "|" in token:
                token = token.split("|")[0]
        if not token:
            continue
        if re.fullmatch(r"[A-Z][A-Z_]*", token):
            assert token in values, f"README placeholder {token} has no test value: {line}"
            value = values[token]
            token = str(value() if callable(value) else value)
        args.append(token)
    return args


def _crops(folder: Path, out: Path, n: int, defects: bool = False) -> Path:
    """n 64x64 crops of the exported held-out brick strip; with ``defects``, every other crop gets a bright
    square and each crop a `<stem>_mask.png` (the labelled-folder layout of `rgi evaluate`)."""
    strip = np.asarray(Image.open(next(folder.glob("*.png"))).convert("L"))  # (512, 128)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        crop = strip[64 * i: 64 * (i + 1), :64].copy()
        mask = np.zeros_like(crop)
        if defects and i % 2:
            crop[20:36, 24:40] = 250
            mask[20:36, 24:40] = 255
        Image.fromarray(crop).save(out / f"brick-{i}.png")
        if defects:
            Image.fromarray(mask).save(out / f"brick-{i}_mask.png")
    return out


@pytest.mark.slow
def test_every_cli_line_runs(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    # The CLI runs in tmp_path (relative outputs such as panel.png land there) on this checkout's code.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": path}
    catalog = tmp_path / "catalog"

    def image_key() -> str:
        return pd.read_parquet(catalog / "images").query("status == 'ok'").image_key.iloc[0]

    values = {
        "DIR": tmp_path / "export",
        "IMAGES": lambda: _crops(tmp_path / "export", tmp_path / "images", 4),
        "LABELLED": lambda: _crops(tmp_path / "export", tmp_path / "labelled", 4, defects=True),
        "CATALOG": catalog,
        "IMAGE_KEY": image_key,
        "REPORT": tmp_path / "report",
        "N": 5,        # optimisation steps
        "K": 8,        # best-of-N candidates
        "M": 4,        # calibration images
        "R": 1,        # calibration rounds
        "STEPS": 2,    # training steps (train-prior, the segmenter)
        "CROPS": 16,   # crops for the texture statistics
    }
    lines = cli_lines()
    commands = {line.split()[1] for line in lines}
    assert {"clean", "query", "show", "train-prior", "calibrate"} <= commands
    outputs = {}
    try:
        for line in lines:
            args = expand(line, values)
            r = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{line}\n-> rgi {shlex.join(args)}\n{r.stdout}\n{r.stderr}"
            outputs.setdefault(args[0], []).append(r.stdout)
    finally:
        drop_gpu_limit()  # `rgi setup` made it on the worker's shared API; left, it would stall later tests' flows

    # What the lines promise.
    images = pd.read_parquet(catalog / "images")
    assert (images.status == "ok").all() and len(images) == 8  # 4 crops, twice: without and with the calibration
    assert images.config_hash.nunique() == 2
    assert "brick-0.png" in outputs["query"][0]
    assert Image.open(tmp_path / "panel.png").size[0] > 64
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert "lam" in json.loads((tmp_path / "calibration.json").read_text())

    from rgi_core import load_prior

    mine = load_prior(str(tmp_path / "my.safetensors"), device="cpu")
    assert {"lam", "texture_stats", "segmenter", "score_threshold"} <= set(mine.defaults)


def test_reference_pages_cover_every_cli_option_and_config_field():
    """docs/reference/cli.md names every subcommand and option of the parser; config.md every config field."""
    import argparse
    import dataclasses

    from flows.cli import build_parser
    from rgi_core import make_config

    cli_doc = (ROOT / "docs" / "reference" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"rgi {name}" for name in sub.choices if f"## `rgi {name}`" not in cli_doc]
    for name, parser in sub.choices.items():
        section = cli_doc.split(f"## `rgi {name}`", 1)[-1].split("\n## ", 1)[0]
        missing += [f"rgi {name} {opt}" for a in parser._actions for opt in a.option_strings[:1]
                    if opt != "-h" and f"`{opt}`" not in section]
    assert not missing, f"docs/reference/cli.md lacks {missing}; regenerate it from `rgi <command> --help`"

    config_doc = (ROOT / "docs" / "reference" / "config.md").read_text()
    fields = {f.name for m in ("mse", "rgi", "rrgi", "dgp") for f in dataclasses.fields(make_config(m))}
    assert not [f for f in fields if f"| `{f}` |" not in config_doc], "docs/reference/config.md lacks a field"
