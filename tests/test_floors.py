"""The floors pyproject declares are the ones the code needs, and this environment meets them.

A CI job on the floor itself (Python 3.11, torch 2.6) is the full check; this one catches the usual
slip: a newer API used while pyproject still promises an older Python or torch.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Modules whose API changed across the versions pyproject allows: everything src/ uses from them must
# be listed in NEEDS (the test finds the uses itself, by reading the code), and every entry must exist.
WATCHED = ("hashlib", "tomllib", "torch.amp", "torch.export", "torch.onnx", "torchvision.models.get_model_weights")

# API used in src/ -> (package, the first version that has it). `f(kw)`: the keyword argument kw of f.
NEEDS = {
    "hashlib.file_digest": ("python", "3.11"),
    "hashlib.sha256": ("python", "3.0"),
    "torch.amp.GradScaler": ("torch", "2.3"),
    "torch.amp.GradScaler(enabled)": ("torch", "2.3"),
    "torch.export.Dim": ("torch", "2.2"),
    "torch.onnx.export": ("torch", "1.0"),
    "torch.onnx.export(dynamo)": ("torch", "2.5"),
    "torch.onnx.export(dynamic_shapes)": ("torch", "2.5"),
    "torch.onnx.export(external_data)": ("torch", "2.6"),  # and the ONNXProgram it returns, saved without it
    "torch.onnx.export(input_names)": ("torch", "1.0"),
    "torch.onnx.export(opset_version)": ("torch", "1.0"),
    "torch.onnx.export(output_names)": ("torch", "1.0"),
    "torch.onnx.export(verbose)": ("torch", "1.0"),
    "torchvision.models.get_model_weights": ("torchvision", "0.15"),
}


class _Uses(ast.NodeVisitor):
    """Every dotted name src/ uses, with import aliases undone, and `f(kw)` for each keyword passed to f."""

    def __init__(self):
        self.aliases, self.found = {}, set()

    def visit_Import(self, node):
        for alias in node.names:
            top = alias.name.split(".")[0]
            self.aliases[alias.asname or top] = alias.name if alias.asname else top
            self.found.add(alias.name)

    def visit_ImportFrom(self, node):
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            self.found.add(f"{node.module}.{alias.name}")

    def dotted(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Attribute(self, node):
        name = self.dotted(node)
        if name:
            self.found.add(name)  # the whole chain only: torch.amp.GradScaler, not torch.amp too
        else:
            self.generic_visit(node)

    def visit_Call(self, node):
        name = self.dotted(node.func)
        if name:
            self.found.update(f"{name}({keyword.arg})" for keyword in node.keywords if keyword.arg)
        self.generic_visit(node)


def used_apis() -> set[str]:
    found = set()
    for path in (ROOT / "src").rglob("*.py"):
        uses = _Uses()
        uses.visit(ast.parse(path.read_text()))
        found |= uses.found
    return {name for name in found if name.startswith(WATCHED) and name != "hashlib"}  # hashlib itself: any Python


def resolve(api: str):
    """The object `api` names, imported for real; for `f(kw)`, f after checking that it takes kw."""
    name, _, keyword = api.partition("(")
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        break
    if keyword:
        assert keyword.rstrip(")") in inspect.signature(target).parameters, api
    return target


def declared_floors() -> dict[str, Version]:
    floors = {"python": Version(PYPROJECT["project"]["requires-python"].removeprefix(">="))}
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        if match:
            floors[match.group(1).lower()] = Version(match.group(2))
    return floors


def test_every_watched_api_the_code_uses_is_listed_and_real():
    used = used_apis()
    assert sorted(used - NEEDS.keys()) == [], "add these to NEEDS with the version that brought them"
    assert sorted(NEEDS.keys() - used) == [], "no longer used: remove them from NEEDS"
    for api in NEEDS:
        resolve(api)  # raises if this environment does not have it


def test_every_api_the_code_uses_exists_at_the_declared_floor():
    floors = declared_floors()
    too_low = [f"{api} needs {package} {needed}, pyproject allows {floors[package]}"
               for api, (package, needed) in NEEDS.items() if floors[package] < Version(needed)]
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
