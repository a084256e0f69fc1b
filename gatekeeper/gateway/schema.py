"""Reading a TOML configuration with one-line errors: :class:`ConfigError` and :class:`Table`.

Every value is read through a :class:`Table`, which knows its key path (``issuers[1].fetch``)
and the file, so any mistake becomes one :class:`ConfigError` line naming the file, the key path
and what is wrong. A table also records what it resolved (defaults filled in, secrets redacted)
for ``gatekeeper check-config``, and :meth:`Table.finish` refuses keys nobody read: a typo,
with the close match suggested.

Usage, for a module that owns a table (e.g. ``[revocation]``)::

    def read(table: Table) -> Settings:
        url = table.url("url", schemes=("redis", "rediss"), default=None)
        password = table.secret("password")
        ttl = table.number("ttl", default=60.0, minimum=0.0)
        table.finish()
        return Settings(url, password, ttl)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

#: Marks a key with no default: missing is an error.
REQUIRED: Final[Any] = object()


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__  # dates and times


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ConfigError(Exception):
    """A mistake in a configuration file: which file, which key, what is wrong.

    ``str()`` is one line, ``FILE: KEY: MESSAGE`` (``FILE: MESSAGE`` when no key applies), with
    any newline in the parts folded, so a command can print it as it is and exit 2.
    """

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(file, key, message)
        self.file = file
        self.key = key
        self.message = message

    def __str__(self) -> str:
        parts = [self.file, self.key, self.message] if self.key else [self.file, self.message]
        return ": ".join(_one_line(part) for part in parts)


@dataclass(frozen=True)
class Secret:
    """A secret read from an ``env:NAME`` or ``file:PATH`` reference. ``repr`` and ``str`` show
    only where it came from; ``value`` is the secret itself."""

    source: str
    value: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.source} (redacted)"


def join(path: str, key: str | int) -> str:
    """The key path of ``key`` under ``path``: ``issuers`` + 1 -> ``issuers[1]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Table:
    """One TOML table being read.

    Readers take the key, a default (:data:`REQUIRED` when there is none) and constraints;
    each returns the typed value or raises :class:`ConfigError`. ``resolved`` collects what was
    read, defaults included, for printing; a sub-table's ``resolved`` is nested in its parent's.
    """

    def __init__(self, data: Mapping[str, Any], *, file: str, path: str = "") -> None:
        self.data = data
        self.file = file
        self.path = path
        self.resolved: dict[str, Any] = {}
        self._read: set[str] = set()

    # -- errors ------------------------------------------------------------------------------

    def error(self, key: str | int | None, message: str) -> ConfigError:
        """A :class:`ConfigError` for ``key`` in this table (None: the table itself)."""
        return ConfigError(self.file, self.path if key is None else join(self.path, key), message)

    def finish(self) -> None:
        """Refuse every key no reader asked for, suggesting the closest known key."""
        unknown = [key for key in self.data if key not in self._read]
        if not unknown:
            return
        key = unknown[0]
        message = "unknown key"
        close = difflib.get_close_matches(key, sorted(self._read), n=1, cutoff=0.6)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif self._read:
            message += f"; known keys here: {', '.join(sorted(self._read))}"
        raise self.error(key, message)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (it still has to be read, or :meth:`finish` refuses it)."""
        return key in self.data

    # -- the readers -------------------------------------------------------------------------

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        self._read.add(key)
        if key in self.data:
            return True, self.data[key]
        if default is REQUIRED:
            raise self.error(key, "missing (required)")
        return False, default

    def _typed(self, key: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
        # bool is an int in Python, never in a config file.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"must be {what}, not {_type_name(value)}")
        if not isinstance(value, kinds):
            raise self.error(key, f"must be {what}, not {_type_name(value)}")
        return value

    def _record(self, key: str, value: T, shown: Any = None) -> T:
        self.resolved[key] = value if shown is None else shown
        return value

    def value(self, key: str, default: Any = REQUIRED) -> Any:
        """The raw value (any type); for values a caller checks itself."""
        _, value = self._get(key, default)
        return self._record(key, value)

    def string(self, key: str, default: Any = REQUIRED, *, empty: bool = False) -> Any:
        """A string (``str``, or the default when missing); ``empty=False`` refuses ``""``."""
        present, value = self._get(key, default)
        if present:
            self._typed(key, value, (str,), "a string")
            if not empty and not value:
                raise self.error(key, "must not be empty")
        return self._record(key, value)

    def boolean(self, key: str, default: Any = REQUIRED) -> Any:
        """``true`` or ``false``."""
        present, value = self._get(key, default)
        if present:
            self._typed(key, value, (bool,), "true or false")
        return self._record(key, value)

    def integer(
        self, key: str, default: Any = REQUIRED, *, minimum: int | None = None, maximum: int | None = None
    ) -> Any:
        """An integer within ``[minimum, maximum]``."""
        present, value = self._get(key, default)
        if present:
            self._typed(key, value, (int,), "an integer")
            self._check_range(key, value, minimum, maximum)
        return self._record(key, value)

    def number(
        self,
        key: str,
        default: Any = REQUIRED,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> Any:
        """A finite number (integer or float) within ``[minimum, maximum]``, returned as float."""
        present, value = self._get(key, default)
        if present:
            self._typed(key, value, (int, float), "a number")
            value = float(value)
            if not math.isfinite(value):
                raise self.error(key, "must be a finite number")
            if positive and value <= 0:
                raise self.error(key, f"must be greater than 0, not {value:g}")
            self._check_range(key, value, minimum, maximum)
        return self._record(key, value)

    def _check_range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, not {value:g}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum:g}, not {value:g}")

    def enum(self, key: str, choices: Sequence[str], default: Any = REQUIRED) -> Any:
        """One of ``choices`` (case-sensitive), suggesting the closest on a mistake."""
        present, value = self._get(key, default)
        if present:
            self._typed(key, value, (str,), "a string")
            if value not in choices:
                close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(repr(c) for c in choices)
                raise self.error(key, f"{value!r} is not one of {listed}{hint}")
        return self._record(key, value)

    def url(self, key: str, default: Any = REQUIRED, *, schemes: Iterable[str] = ("http", "https")) -> Any:
        """An absolute URL with one of ``schemes`` and a host (and a valid port, if any)."""
        present, value = self._get(key, default)
        if present:
            self._typed(key, value, (str,), "a URL string")
            check_url(self, key, value, tuple(schemes))
        return self._record(key, value)

    def strings(self, key: str, default: Any = REQUIRED, *, split: bool = False) -> Any:
        """An array of non-empty strings, as a tuple. ``split=True`` also takes one string of
        space-separated names (``"read write"``), the way OAuth writes scopes."""
        present, value = self._get(key, default)
        if present:
            if split and isinstance(value, str):
                value = value.split()
            self._typed(key, value, (list,), "an array of strings")
            for index, item in enumerate(value):
                if not isinstance(item, str) or not item:
                    raise self.error(key, f"item {index} must be a non-empty string, not {_type_name(item)}")
            value = tuple(value)
        shown = list(value) if isinstance(value, tuple) else None
        return self._record(key, value, shown)

    def secret(self, key: str, default: Any = None) -> Secret | None:
        """A secret given as ``env:NAME`` (an environment variable) or ``file:PATH`` (a file's
        content without its trailing newline; a relative path is relative to the config file).

        An inline value is refused: a config file is copied, committed and printed far more
        often than an environment variable or a mounted secret file, and a warning is read by
        nobody once the value has leaked. ``check-config`` shows only the reference.
        """
        present, value = self._get(key, default)
        if not present:
            self.resolved[key] = value
            return value  # type: ignore[no-any-return]
        self._typed(key, value, (str,), "a string 'env:NAME' or 'file:PATH'")
        kind, sep, ref = value.partition(":")
        if not sep or kind not in ("env", "file") or not ref:
            # Never echo the value: it may be the secret itself.
            raise self.error(
                key,
                "an inline secret is refused: give 'env:NAME' (an environment variable) "
                "or 'file:PATH' (a file holding it)",
            )
        if kind == "env":
            text = os.environ.get(ref)
            if text is None:
                raise self.error(key, f"the environment variable {ref} is not set")
        else:
            path = Path(ref)
            if not path.is_absolute():
                path = Path(self.file).resolve().parent / path
            try:
                text = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise self.error(key, f"cannot read the secret file {ref}: {exc.strerror or exc}") from None
        if not text:
            raise self.error(key, f"the secret from {value} is empty")
        secret = Secret(value, text)
        self.resolved[key] = str(secret)
        return secret

    # -- nesting -----------------------------------------------------------------------------

    def table(self, key: str, *, required: bool = False) -> Table:
        """The sub-table ``key`` (an empty one when missing, unless ``required``)."""
        present, value = self._get(key, REQUIRED if required else {})
        if present:
            self._typed(key, value, (dict,), "a table")
        sub = Table(value, file=self.file, path=join(self.path, key))
        self.resolved[key] = sub.resolved
        return sub

    def tables(self, key: str) -> list[Table]:
        """The array of tables ``[[key]]`` (empty when missing)."""
        present, value = self._get(key, [])
        if present:
            self._typed(key, value, (list,), "an array of tables ([[" + key + "]])")
        subs = []
        path = join(self.path, key)
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(self.file, join(path, index), f"must be a table, not {_type_name(item)}")
            subs.append(Table(item, file=self.file, path=join(path, index)))
        self.resolved[key] = [sub.resolved for sub in subs]
        return subs

    def named_tables(self, key: str) -> dict[str, Table]:
        """The tables ``[key.NAME]`` by name (empty when missing)."""
        present, value = self._get(key, {})
        if present:
            self._typed(key, value, (dict,), "a table of tables")
        subs: dict[str, Table] = {}
        shown: dict[str, Any] = {}
        path = join(self.path, key)
        for name, item in value.items():
            if not isinstance(item, dict):
                raise ConfigError(self.file, join(path, name), f"must be a table, not {_type_name(item)}")
            subs[name] = Table(item, file=self.file, path=join(path, name))
            shown[name] = subs[name].resolved
        self.resolved[key] = shown
        return subs

    def build(self, key: str | None, factory: Callable[[], T], *, fields: Iterable[str] = ()) -> T:
        """Call ``factory`` (a dataclass constructor, say), turning its ``ValueError`` or
        ``TypeError`` into a :class:`ConfigError` at ``key`` (None: this table, or the first of
        ``fields`` that the message names, so ``leeway must be ...`` lands on ``.leeway``)."""
        try:
            return factory()
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if key is None:
                words = set(re.findall(r"[A-Za-z_]+", message))
                named = [name for name in fields if name in words]
                # Of the fields the message names, blame one the file set, if any.
                key = next((n for n in named if n in self.data), named[0] if named else None)
            raise self.error(key, message) from None


def check_url(table: Table, key: str, value: str, schemes: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is an absolute URL with one of ``schemes`` and a host."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for an out-of-range or non-numeric port
    except ValueError as exc:
        raise table.error(key, f"not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise table.error(key, f"{value!r} is not a URL starting with {allowed}")
    if not parts.hostname:
        raise table.error(key, f"{value!r} has no host")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise table.error(key, "a URL cannot contain spaces or control characters")


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls``, so readers need not repeat it."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            return REQUIRED
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def load(path: str | Path) -> Table:
    """The root table of the TOML file at ``path``; a missing file or a syntax error is a
    :class:`ConfigError` (tomllib's message says the line and column)."""
    name = str(path)
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read the file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, "", "not valid TOML: the file is not UTF-8") from None
    return Table(data, file=name)
