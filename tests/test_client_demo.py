"""The client half of ``gatekeeper demo`` (gatekeeper.demo_client), run in-process."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from gatekeeper import demo_client
from gatekeeper.client import ClientCredentialsAuth

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


def test_the_worker_story_passes_every_check() -> None:
    out = io.StringIO()
    assert demo_client.run(out) == 0, out.getvalue()
    text = out.getvalue()
    for title in ("obtain and call", "reuse the cached token", "renew ahead of expiry", "API keys rotate"):
        assert re.search(rf"^  ok   {title}", text, re.M), text
    assert "token requests: 1" in text
    assert "by refresh_token, refresh rotated fp:" in text
    assert "ours -> [401] then renewed once and replayed -> 200" in text
    assert "InvalidRefreshToken: token endpoint http://127.0.0.1:" in text
    assert "HTTP 400 invalid_grant: refresh token revoked" in text
    assert "all 5 client checks passed" in text
    assert not JWT.search(text)


def test_a_step_that_misbehaves_fails_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoReplay(ClientCredentialsAuth):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, retry_statuses=(), **kwargs)

    monkeypatch.setattr(demo_client, "ClientCredentialsAuth", NoReplay)
    out = io.StringIO()
    assert demo_client.run(out) == 1
    assert re.search(r"^  FAIL API keys rotate", out.getvalue(), re.M)
    assert "FAILED: 1 of 5 client checks" in out.getvalue()
