"""Every shipped gateway example configuration passes ``gatekeeper check-config``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "gateway"
CONFIGS = sorted(EXAMPLES.glob("*.toml"))


def test_there_are_examples() -> None:
    assert (EXAMPLES / "addressfinder.toml") in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_example_passes_check_config(path: Path, tmp_path: Path) -> None:
    # Secrets are references: give every env: reference a value for the check.
    env = {name: "x" * 64 for name in re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', path.read_text())}
    done = subprocess.run(
        [sys.executable, "-m", "gatekeeper.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == f"{path}: ok"
