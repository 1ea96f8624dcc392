"""What an installed usertrail contains: every file the server reads at run time (templates, scripts,
vendored libraries, migrations) must be named by the package data of pyproject.toml, or a normal
(non-editable) install serves pages whose scripts answer 404."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "usertrail"


def test_every_non_python_file_of_the_package_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["usertrail"]
    # setuptools expands package-data patterns with glob, relative to the package's folder.
    packaged = {
        path for pattern in patterns for path in glob.glob(pattern, root_dir=PACKAGE) if (PACKAGE / path).is_file()
    }
    files = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert files - packaged == set()
    assert "web/static/vendor/chartjs/chart.umd.min.js" in packaged
