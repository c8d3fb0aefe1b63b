"""benchmarks/device_check.sh, the script a lent GPU runs, checked on this CPU in its quick form.

The GPU machine has torch but no Prefect, s3fs or DuckDB, and nothing can be installed there. Here those three are
shadowed by modules that fail to import, so the script passes only if every part runs on rgi_core alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("prefect", "s3fs", "duckdb")  # installed here, not on the GPU machine


@pytest.mark.integration
def test_device_check_runs_every_part_without_prefect_s3fs_or_duckdb(tmp_path: Path) -> None:
    for name in ABSENT:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    shadowed = subprocess.run([sys.executable, "-c", "import prefect"], env=env, capture_output=True, text=True)
    assert "not on the GPU machine" in shadowed.stderr  # the stand-ins shadow the installed packages
    r = subprocess.run(["bash", "benchmarks/device_check.sh", "--device", "cpu", "--quick"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=280)
    table = r.stdout[r.stdout.rindex("| part | result | detail |"):].splitlines()[2:]
    rows = {cells[0]: cells[1:] for row in table if row.startswith("| ")
            for cells in [[c.strip() for c in row.strip("| ").split(" | ")]]}
    assert set(rows) == {"device checks", "P1/P3 batched vs loop", "cost benchmark (short)",
                         "precision (fp32 / bf16 / tf32)", "kernel at the defaults"}, r.stdout[-2000:]
    assert all(result == "ok" for result, *_ in rows.values()), (rows, r.stderr[-3000:])
    assert r.returncode == 0
    rate = re.search(r"([0-9.]+) images/s", rows["kernel at the defaults"][1])
    assert rate and float(rate.group(1)) > 0
