"""One path normalisation for the gateway, so the rule engine and the upstream see the same path.

Path confusion is the classic forward-auth bypass: the gateway matches ``/public/..%2Fadmin``
against its rules as one path, the upstream decodes and resolves it to ``/admin``. Here a raw
request path is turned into exactly one normal form, or refused with :class:`PathRejected`
(rendered as a 400) when it cannot be normalised without guessing what the upstream will do.

The rule, in order:

1. The path must start with ``/`` and be ASCII (raw non-ASCII, CR/LF, NUL, other control
   characters, space-like bytes and ``DEL`` are refused; clients percent-encode them).
   A raw backslash is refused (Windows servers and some frameworks treat it as ``/``).
   ``?`` and ``#`` cannot occur in a path: :func:`split_target` splits the query off first and
   refuses a fragment.
2. Percent-escapes must be ``%`` plus two hex digits, and the fully decoded path must be UTF-8.
3. Escapes of *unreserved* characters (RFC 3986 2.3: ``A-Z a-z 0-9 - . _ ~``) are decoded
   (``/%61dmin`` is ``/admin``); every other escape stays encoded with upper-case hex
   (``%c3%a9`` becomes ``%C3%A9``), RFC 3986 6.2.2's normal form.
4. Refused because the upstream may decode them into something the rules did not see: an
   encoded ``/`` (``%2F``) or ``\\`` (``%5C``), any encoded control character (``%00``-``%1F``,
   ``%7F``), a double-encoded escape (``%25`` followed by two hex digits, e.g. ``%252e``), and a
   segment that is ``.`` or ``..`` only after decoding (``%2e``, ``.%2E`` ...).
5. Repeated slashes collapse into one (``//admin`` is ``/admin``).
6. Dot segments are resolved (RFC 3986 5.2.4: ``/a/./b/../c`` is ``/a/c``); a ``..`` that
   would climb above the root is refused rather than clamped.
7. Semicolons (``;`` and ``%3B``) are refused by default: Tomcat and Spring treat
   ``/admin;x`` as ``/admin`` (matrix parameters), other servers as a different path, so the
   gateway cannot know which one the upstream is (Spring Security's ``StrictHttpFirewall``
   refuses them for the same reason). ``allow_semicolon=True`` keeps them as ordinary path
   characters, never strips them.

Paths are case-sensitive, as RFC 3986 says: ``/Admin`` is not ``/admin`` and matches only the
rules written for it (an upstream that folds case needs rules that cover both spellings).

The result is still a percent-encoded path (only unreserved characters decoded), which is what
the rules are matched against and what an upstream receives: write rule patterns in that form.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["PathRejected", "normalise_path", "split_target"]


class PathRejected(ValueError):
    """The path cannot be normalised unambiguously; ``reason`` says why (safe to show a client:
    it names the offending construct, never echoes the path)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_HEX: Final = frozenset("0123456789abcdefABCDEF")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar minus unreserved and pct-encoded: sub-delims, ":" and "@", plus "/" between
# segments. Other printable ASCII ("<", ">", '"', "{", "|", "^", "`", "[", "]" and space, which
# is a control-adjacent separator) is refused raw: clients must encode it.
_RAW_ALLOWED: Final = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_ENCODED_REFUSED: Final[dict[int, str]] = {
    0x2F: "an encoded '/' (%2F)",
    0x5C: "an encoded '\\' (%5C)",
    **{b: "an encoded control character" for b in (*range(0x20), 0x7F)},
}
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
# A path the full rule gives back unchanged when it also has no "//", no "/." and (unless
# allowed) no ";": raw-allowed characters only, no escapes.
_PLAIN: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


def split_target(target: str) -> tuple[str, str]:
    """Split a request target (``/path?query``) into the raw path and the raw query string.

    A fragment (``#``) is refused: clients never send one, so it is a smuggling attempt.
    """
    if "#" in target:
        raise PathRejected("a fragment ('#') in the request target")
    path, _, query = target.partition("?")
    return path, query


def _check_raw(raw: str, allow_semicolon: bool) -> None:
    if not raw.startswith("/"):
        raise PathRejected("the path does not start with '/'")
    for char in raw:
        if char in _RAW_ALLOWED or char == "%":
            continue
        if char == "\\":
            raise PathRejected("a backslash in the path")
        if char == "\x00":
            raise PathRejected("a NUL character in the path")
        if char < " " or char == "\x7f":
            raise PathRejected("a control character in the path")
        if char > "\x7f":
            raise PathRejected("a non-ASCII character in the path (percent-encode it)")
        if char in "?#":
            raise PathRejected(f"a {char!r} in the path")
        raise PathRejected(f"the character {char!r} must be percent-encoded")
    if not allow_semicolon and ";" in raw:
        raise PathRejected("a ';' in the path (matrix parameters are ambiguous)")


def _decode_escapes(segment: str, allow_semicolon: bool) -> tuple[str, bool]:
    """Decode unreserved escapes in one segment; returns (segment, had an encoded dot)."""
    if "%" not in segment:
        return segment, False
    out: list[str] = []
    encoded_dot = False
    i = 0
    n = len(segment)
    while i < n:
        char = segment[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        pair = segment[i + 1 : i + 3]
        if len(pair) != 2 or not (pair[0] in _HEX and pair[1] in _HEX):
            raise PathRejected("an invalid percent-encoding in the path")
        byte = int(pair, 16)
        refused = _ENCODED_REFUSED.get(byte)
        if refused is not None:
            raise PathRejected(f"{refused} in the path")
        after = segment[i + 3 : i + 5]
        if byte == 0x25 and len(after) == 2 and after[0] in _HEX and after[1] in _HEX:
            raise PathRejected("a double-encoded percent-escape (%25XX) in the path")
        if byte == 0x3B and not allow_semicolon:
            raise PathRejected("an encoded ';' (%3B) in the path")
        decoded = chr(byte)
        if decoded in _UNRESERVED:
            encoded_dot = encoded_dot or decoded == "."
            out.append(decoded)
        else:
            out.append("%" + pair.upper())
        i += 3
    return "".join(out), encoded_dot


def _check_utf8(path: str) -> None:
    if "%" not in path:
        return
    data = bytearray()
    last = 0
    for match in _ESCAPE.finditer(path):
        data += path[last : match.start()].encode("ascii")
        data.append(int(match.group(1), 16))
        last = match.end()
    data += path[last:].encode("ascii")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise PathRejected("the path's percent-encoded bytes are not UTF-8") from None


def normalise_path(raw: str | bytes, *, allow_semicolon: bool = False) -> str:
    """The one normal form of a raw (percent-encoded) request path, or :class:`PathRejected`.

    ``raw`` is the path only (see :func:`split_target` for a target with a query). See the
    module docstring for the rule.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise PathRejected("a non-ASCII byte in the path (percent-encode it)") from None
    if (
        "//" not in raw
        and "/." not in raw
        and (allow_semicolon or ";" not in raw)
        and _PLAIN.fullmatch(raw) is not None
    ):
        # Already normal (no escape to decode, no empty or dot segment): the loop below would
        # rebuild the same string. tests/gateway/test_paths.py checks both agree.
        return raw
    return _normalise(raw, allow_semicolon)


def _normalise(raw: str, allow_semicolon: bool) -> str:
    """The full rule (no fast path)."""
    _check_raw(raw, allow_semicolon)
    segments: list[str] = []
    parts = raw.split("/")
    last = len(parts) - 1
    for index, part in enumerate(parts[1:], start=1):
        segment, encoded_dot = _decode_escapes(part, allow_semicolon)
        if segment in (".", ".."):
            if encoded_dot:
                raise PathRejected("an encoded dot segment (%2E) in the path")
            if segment == "..":
                if not segments:
                    raise PathRejected("a '..' segment climbs above the root")
                segments.pop()
            if index == last:
                segments.append("")  # "/a/b/.." is "/a/": the trailing slash stays
            continue
        if segment == "" and index != last:
            continue  # repeated slashes collapse
        segments.append(segment)
    path = "/" + "/".join(segments)
    _check_utf8(path)
    return path
