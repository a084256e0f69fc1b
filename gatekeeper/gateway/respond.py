"""Sending a whole response (its head and a body already in hand) through ASGI.

The start message carries :data:`BODY_FOLLOWS`: the gateway's HTTP protocol
(:mod:`.http_protocol`) then writes the head together with the body, one ``send()`` and one TCP
segment instead of two. Another server ignores the key. When ``send`` is that protocol's own,
the response skips the two messages: its :data:`WHOLE` method takes it in one call.

That protocol also offers an app each request before starting the app's task (:data:`DIRECT`):
the reverse proxy answers a cached-token ``GET`` from the upstream connection's callback, with
no task and no coroutine (:meth:`.proxy.ReverseProxy.gatekeeper_direct`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

#: An ASGI ``send`` as the gateway's doors call it (with plain dicts).
Send = Callable[[dict[str, Any]], Any]

#: Key of an ``http.response.start`` message: the body follows at once, the head may wait for it.
BODY_FOLLOWS: Final = "gatekeeper.body_follows"
#: The method of a ``send``'s owner that takes a whole response in one call
#: (``_Cycle.gatekeeper_send_whole`` in :mod:`.http_protocol`).
WHOLE: Final = "gatekeeper_send_whole"
#: The method of an app that the gateway's protocol offers each request before it starts the
#: app's task: ``app.gatekeeper_direct(cycle) -> bool`` (True: the app serves it without one,
#: through the :class:`DirectCycle`; False: nothing was done, the task runs as usual).
DIRECT: Final = "gatekeeper_direct"


class DirectCycle(Protocol):
    """What the gateway's protocol gives an app's :data:`DIRECT` method: the request's scope, a
    whole response written at once, and the ASGI task started later when the response cannot be
    written from a callback (a streamed body, an error path): ``gatekeeper_run(app)`` runs
    ``app`` on this request as the server would have."""

    scope: dict[str, Any]

    def gatekeeper_write(self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None: ...

    def gatekeeper_run(self, app: Callable[..., Awaitable[None]]) -> None: ...


async def send_whole(send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
    """Send ``status``, ``headers`` (framing included: ``content-length``) and all of ``body``.

    When ``send`` is the gateway's own protocol's (its owner has :data:`WHOLE`), the response
    is handed over in one call, without the two messages."""
    whole = getattr(getattr(send, "__self__", None), WHOLE, None)
    if whole is not None:
        await whole(status, headers, body)
        return
    await send({"type": "http.response.start", "status": status, "headers": headers, BODY_FOLLOWS: True})
    await send({"type": "http.response.body", "body": body})
