"""The floors pyproject declares are the ones the code needs, and this environment meets them.

A CI job on the floor itself (Python 3.11, torch 2.3) is the full check; this one catches the usual
slip: a newer API used while pyproject still promises an older Python or torch.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# API used in src/ -> (package, the first version that has it).
NEEDS = {
    "hashlib.file_digest": ("python", "3.11"),
    "torch.amp.GradScaler": ("torch", "2.3"),
    "tomllib": ("python", "3.11"),
}


def declared_floors() -> dict[str, Version]:
    floors = {"python": Version(PYPROJECT["project"]["requires-python"].removeprefix(">="))}
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        if match:
            floors[match.group(1).lower()] = Version(match.group(2))
    return floors


def test_every_api_the_code_uses_exists_at_the_declared_floor():
    source = "\n".join(path.read_text() for path in (ROOT / "src").rglob("*.py"))
    floors = declared_floors()
    too_low = [f"{api} needs {package} {needed}, pyproject allows {floors[package]}"
               for api, (package, needed) in NEEDS.items()
               if api in source and floors[package] < Version(needed)]
    assert not too_low


def test_this_environment_meets_the_declared_floors():
    floors = declared_floors()
    assert Version(".".join(map(str, sys.version_info[:2]))) >= floors.pop("python")
    for package, floor in floors.items():
        assert Version(version(package).split("+")[0]) >= floor, package


def test_the_license_is_an_spdx_string():  # a table makes setuptools warn on every install
    assert PYPROJECT["project"]["license"] == "MIT"


def test_the_readme_states_the_python_floor():
    floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert f"Python {floor}+" in (ROOT / "README.md").read_text()
