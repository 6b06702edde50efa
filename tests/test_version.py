"""One version string: pyproject.toml's, read back from the installed package's metadata."""
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import needle

REPO = Path(__file__).resolve().parent.parent


def test_version_comes_from_package_metadata():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert needle.__version__ == version("needle") == declared


def test_needle_train_version():
    out = subprocess.run([sys.executable, "-m", "needle.cli.train", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"needle-train (needle {needle.__version__})"


def test_license_and_metadata():
    from importlib.metadata import metadata

    meta = metadata("needle")
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert meta.get("License-Expression") == "MIT" or meta.get("License") == "MIT"
    assert meta.get("Author") or meta.get("Author-email")
    assert any("dlsyscourse.org" in url for url in meta.get_all("Project-URL") or [])
