from collections.abc import Mapping, Sequence

def request_head(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], chunked: bool
) -> bytes | None: ...
def rewrite_request(
    headers: Sequence[tuple[bytes, bytes]],
    classified: Mapping[bytes, tuple[int, bytes]],
    forward_authorization: bool,
    forward_host: bool,
    x_forwarded: bool,
    netloc: bytes,
    peer: bytes,
    scheme: bytes,
    identity: Sequence[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]] | None: ...
def rewrite_response(
    headers: Sequence[tuple[bytes, bytes]],
    classified: Mapping[bytes, tuple[bool, bool, bool, bytes]],
) -> tuple[list[tuple[bytes, bytes]], int | None] | None: ...
