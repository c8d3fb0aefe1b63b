"""rgi_core is pure torch: importing it (all modules) never imports prefect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rgi_core


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
