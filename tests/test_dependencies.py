"""The declared dependencies are exactly what the code imports (plus the tools it runs without importing)."""

import ast
import importlib.metadata as md
import re
import sys
import tomllib

from conftest import ROOT

# Used without an import statement, each for a reason.
NOT_IMPORTED = {"dvc": "the pipeline's command-line tool", "tabulate": "pandas' DataFrame.to_markdown",
                "tensorflow": "tensorflow-cpu and tensorflow[and-cuda] both install the `tensorflow` module",
                "httptools": "uvicorn's HTTP parser, used when installed", "uvloop": "uvicorn's event loop, likewise"}


def imported_distributions() -> set[str]:
    """Distributions that provide the third-party modules flowerpipe/ and stages/ import."""
    modules = set()
    for folder in ("flowerpipe", "stages"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"flowerpipe", "stages"}
    owners = md.packages_distributions()
    known = {"cuda": "cuda-python", "tensorrt": "tensorrt-cu12", "pynvml": "nvidia-ml-py"}  # GPU-only packages
    return {normalize(known.get(m) or owners[m][0]) for m in third_party if m in known or m in owners}


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Distribution names in [project] dependencies and the gpu extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["gpu"]
    return {normalize(re.split(r"[\[=<>~! ]", s, maxsplit=1)[0]) for s in specs}


def test_every_import_is_declared_and_every_declaration_imported():
    imported, listed = imported_distributions(), declared()
    assert imported - listed == set(), "imported but not declared"
    unused = listed - imported - set(NOT_IMPORTED) - {"tensorflow-cpu", "onnxruntime-gpu"}
    assert unused == set(), "declared but never imported"


def test_declared_pins_match_the_lock():
    """Each exact pin in pyproject.toml is the version requirements.lock installs."""
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().split()
                if "==" in line and not line.startswith("#"))
    lock = {normalize(k): v for k, v in lock.items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        name, version = spec.split("#")[0].split(";")[0].strip().split("==")
        assert lock.get(normalize(name)) == version, (name, version, lock.get(normalize(name)))
