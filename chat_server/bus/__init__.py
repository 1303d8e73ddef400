"""Fan-out between replicas: the ``Bus`` protocol. Backends: ``memory.py`` (one process)
and ``redis.py`` (replicas sharing one Redis).

Only a backend module imports its driver; the hub is the only caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Handler = Callable[[bytes], None]


class Bus(Protocol):
    """Publish/subscribe of opaque payloads on named channels.

    Contract:
    - Delivery is at-most-once: a payload published while a subscriber is
      disconnected is lost for it. Callers detect gaps (seq/offset) and repair them.
    - Payloads from one publisher on one channel arrive in publish order.
    - A publisher receives its own payloads if it is subscribed (the hub drops them).
    - ``handler`` is called on the event loop and must not block.
    - ``subscribe`` is idempotent per channel and returns once the subscription is
      live: everything published after it returns is delivered (while connected).
      ``unsubscribe`` of an unknown channel is a no-op.
    - After a lost connection is restored, every channel is subscribed again and the
      ``on_reconnect`` callbacks run, so callers can repair what they missed.
    - ``healthy`` is false while the backend cannot deliver. After ``aclose`` no
      handler is called again.
    """

    @property
    def healthy(self) -> bool: ...

    def on_reconnect(self, callback: Callable[[], None]) -> None: ...

    async def start(self) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def aclose(self) -> None: ...
