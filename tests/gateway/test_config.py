"""Configuration: the reading toolkit (one-line errors with file and key path) and the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.gateway.schema import ConfigError, Secret, Table, load


def _table(data: dict[str, object], file: str = "gk.toml") -> Table:
    return Table(data, file=file)


def _error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# -- the toolkit ---------------------------------------------------------------------------------


def test_error_names_file_key_path_and_problem_in_one_line() -> None:
    root = _table({"issuers": [{"leeway": 10}, {"leeway": "soon"}]})
    second = root.tables("issuers")[1]
    with pytest.raises(ConfigError) as excinfo:
        second.number("leeway")
    assert _error(excinfo) == "gk.toml: issuers[1].leeway: must be a number, not a string"


def test_message_with_newlines_is_folded() -> None:
    assert str(ConfigError("f.toml", "a.b", "one\ntwo")) == "f.toml: a.b: one two"


def test_unknown_key_suggests_the_close_match() -> None:
    table = _table({"server": {"listen": "127.0.0.1:1", "worekrs": 2}})
    server = table.table("server")
    server.string("listen")
    server.integer("workers", 1)
    with pytest.raises(ConfigError) as excinfo:
        server.finish()
    assert _error(excinfo) == "gk.toml: server.worekrs: unknown key (did you mean 'workers'?)"


def test_unknown_key_without_close_match_lists_known_keys() -> None:
    table = _table({"zzz": 1})
    table.integer("workers", 1)
    with pytest.raises(ConfigError, match=r"zzz: unknown key; known keys here: workers"):
        table.finish()


def test_booleans_are_not_numbers_and_numbers_are_bounded() -> None:
    with pytest.raises(ConfigError, match="must be an integer, not a boolean"):
        _table({"n": True}).integer("n")
    with pytest.raises(ConfigError, match="must be at least 1, not 0"):
        _table({"n": 0}).integer("n", minimum=1)
    with pytest.raises(ConfigError, match="must be greater than 0"):
        _table({"n": 0}).number("n", positive=True)
    with pytest.raises(ConfigError, match="finite"):
        _table({"n": float("inf")}).number("n")
    assert _table({"n": 3}).number("n") == 3.0


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match=r"gk.toml: issuer: missing \(required\)"):
        _table({}).string("issuer")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://example.com/keys", "is not a URL starting with http://, https://"),
        ("https:///keys", "has no host"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://exa mple.com/", "spaces"),
        ("example.com/keys", "is not a URL starting with"),
    ],
)
def test_bad_urls(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _table({"jwks_url": value}).url("jwks_url")


def test_enum_suggests() -> None:
    with pytest.raises(ConfigError, match=r"'requird' is not one of .* \(did you mean 'required'\?\)"):
        _table({"access": "requird"}).enum("access", ("required", "optional", "exempt"))


def test_strings_accepts_space_separated_when_asked() -> None:
    assert _table({"s": "a b"}).strings("s", split=True) == ("a", "b")
    with pytest.raises(ConfigError, match="item 1 must be a non-empty string, not an integer"):
        _table({"s": ["a", 2]}).strings("s")


def test_secret_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GK_TEST_SECRET", "s3cret-from-env")
    table = _table({"a": "env:GK_TEST_SECRET"})
    secret = table.secret("a")
    assert secret == Secret("env:GK_TEST_SECRET", "s3cret-from-env")
    assert "s3cret" not in repr(secret)
    assert "s3cret" not in str(table.resolved)
    (tmp_path / "secret.txt").write_text("s3cret-from-file\n")
    file_table = Table({"b": "file:secret.txt"}, file=str(tmp_path / "gk.toml"))
    found = file_table.secret("b")
    assert found is not None
    assert found.value == "s3cret-from-file"


def test_inline_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as excinfo:
        _table({"hmac_secret": "hunter2-hunter2"}).secret("hmac_secret")
    text = _error(excinfo)
    assert "inline secret is refused" in text
    assert "hunter2" not in text


def test_secret_references_that_resolve_to_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GK_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="environment variable GK_TEST_UNSET is not set"):
        _table({"a": "env:GK_TEST_UNSET"}).secret("a")
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        _table({"a": "file:/nonexistent/secret"}).secret("a")


def test_load_reports_toml_syntax_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load(bad)
    assert _error(excinfo).startswith(f"{bad}: not valid TOML:")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "missing.toml")


def test_resolved_tree_has_defaults() -> None:
    root = _table({"issuers": [{"issuer": "https://a"}]})
    server = root.table("server")
    server.integer("workers", 1)
    root.tables("issuers")[0].string("issuer")
    assert root.resolved == {"server": {"workers": 1}, "issuers": [{"issuer": "https://a"}]}
