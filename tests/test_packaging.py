"""The install story holds: the distribution's name, and the extras the commands need.

The README's first command (``bash scripts/demo.sh``) installs ``.[server]`` into a fresh venv;
CI runs it in a fresh clone. These tests catch the same mistakes sooner: a third-party module
that the demo imports and that neither the core dependencies nor the ``server`` extra bring.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

from gatekeeper import cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DISTRIBUTION = PYPROJECT["project"]["name"]
# Import names that differ from their distribution's name.
IMPORT_NAMES = {"prometheus-client": "prometheus_client", "pyjwt": "jwt"}
#: Modules that need an extra of their own, imported only where that feature is configured
#: (inside a function): the walk does not follow them, and a test checks they stay lazy.
EXTRA_MODULES = {"gatekeeper.revocation_redis": "redis"}


def _requirement_modules(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        names.add(IMPORT_NAMES.get(name, name.replace("-", "_")))
    return names


def _third_party_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Top-level third-party modules imported by a gatekeeper module and the gatekeeper modules
    it imports, at any depth (imports inside functions count: they run when the command does)."""
    seen = set() if seen is None else seen
    if module in seen:
        return set()
    seen.add(module)
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                targets = [node.module or ""]
        else:
            continue
        for target in targets:
            top = target.split(".")[0]
            if top == "gatekeeper":
                if target in EXTRA_MODULES:
                    continue
                if (ROOT / (target.replace(".", "/") + ".py")).exists() or (
                    ROOT / target.replace(".", "/") / "__init__.py"
                ).exists():
                    found |= _third_party_imports(target, seen)
            elif top and top not in sys.stdlib_module_names:
                found.add(top)
    return found


def test_distribution_has_a_name_of_its_own() -> None:
    # "gatekeeper" on PyPI is an unrelated project: an install hint naming it installs that.
    assert DISTRIBUTION == "gatekeeper-jwt"


def test_demo_needs_nothing_beyond_core_and_server_extra() -> None:
    provided = _requirement_modules(PYPROJECT["project"]["dependencies"])
    provided |= _requirement_modules(PYPROJECT["project"]["optional-dependencies"]["server"])
    missing = _third_party_imports("gatekeeper.demo") - provided
    assert not missing, f"gatekeeper demo imports {sorted(missing)}, which [server] does not install"


def _module_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.rpartition(".")[2] if node.level else node.module)
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.rpartition(".")[2] for alias in node.names)
    return found


def test_extra_modules_are_imported_only_when_configured() -> None:
    # An extra's module imported at the top of a core or server module would make the extra
    # a requirement of everything: it must be imported inside the function that uses it.
    for module, extra in EXTRA_MODULES.items():
        assert extra in PYPROJECT["project"]["optional-dependencies"]
        short = module.rpartition(".")[2]
        for path in (ROOT / "gatekeeper").rglob("*.py"):
            if path.stem != short:
                assert short not in _module_level_imports(path), f"{path} imports {module} at module level"


def test_demo_script_installs_the_server_extra() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8")
    assert re.search(r"setup\.sh server\b", script)


def test_missing_dependency_hint_names_the_distribution(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Simulate a venv without uvicorn: the demo's import fails and the hint must be installable.
    monkeypatch.setitem(sys.modules, "gatekeeper.demo", None)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert f"pip install '{DISTRIBUTION}[server]'" in err
    assert "'gatekeeper[" not in err


def test_licence_is_an_spdx_expression() -> None:
    # A table ({text = ...}) makes current setuptools print a deprecation wall on every install.
    assert isinstance(PYPROJECT["project"]["license"], str)
