"""The README's code runs as written and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_library_example_runs_and_prints_its_comments() -> None:
    block = python_blocks()[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    promised = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+# (.*)", block)]
    assert printed == promised


def test_custom_profile_examples_are_valid_profiles() -> None:
    from gatekeeper import AuthError, get_profile

    block = next(b for b in python_blocks() if b.startswith("errors = "))
    namespace: dict[str, object] = {}
    for line in block.strip().split("\nerrors = "):
        exec(
            compile(line if line.startswith("errors") else "errors = " + line, "README.md", "exec"), namespace
        )
        rendered = get_profile(namespace["errors"]).render(AuthError("insufficient_scope"))  # type: ignore[arg-type]
        assert rendered.status in (403, 418)


def test_quickstart_commands_exist() -> None:
    text = README.read_text(encoding="utf-8")
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in text
        assert (README.parent / script).is_file()
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in ci
