"""rgi_core is pure torch: importing it (all modules) never imports prefect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rgi_core

pytestmark = pytest.mark.integration  # fresh interpreters (subprocesses) import the package


def test_core_never_imports_prefect():
    modules = sorted(
        "rgi_core." + ".".join(p.relative_to(Path(rgi_core.__file__).parent).with_suffix("").parts)
        for p in Path(rgi_core.__file__).parent.rglob("*.py")
        if p.name != "__init__.py"
    )
    probe = "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + probe
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert len(modules) >= 8


def test_querying_a_catalog_does_not_import_torch():
    # `rgi query` runs SQL on Parquet; the package's public names (invert, load_prior, ...) load on first use.
    code = ("import sys\nimport rgi_core.catalog.sql\nimport rgi_core\nassert 'torch' not in sys.modules\n"
            "from rgi_core import invert\nprint(invert.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["rgi_core.inversion.solver", "True"], out.stderr
