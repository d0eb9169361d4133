"""At most one live ingest stream per camera in this process: the newest replaces the older.

    Hello(cam) ─► claim(cam) ─► older stream of cam? ──► mark it replaced, wait for its
                    │                                    in-flight frame to finish
                    ▼
                 StreamLease ─► messages() ... run(ingest) ─► ack   (until replaced)

Why replace rather than refuse: an edge that reconnects after a link cut finds the server
still holding its half-open old stream until keepalive expires (80 s here); refusing would
lock the camera out that long. A replaced stream acks nothing more: its read ends, a frame
it is storing finishes (durably: a later replay is a truthful duplicate) but is not acked,
and the stream ends with ABORTED, which the edge retries. The newer stream's Welcome comes
after that frame, so its next_sequence counts it.

Per process only: across ingest replicas the store's unique (camera, sequence) constraint
keeps acks truthful (cloud/store/frame_store.py); this registry keeps one process from
interleaving two streams of one camera. Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class StreamReplaced(RuntimeError):
    """A newer stream of the same camera took over this one."""


@dataclass(frozen=True)
class Outgoing:
    """A message for the edge that no uplink message asked for (an EnhancementRequest),
    yielded by ``StreamLease.messages`` between the edge's messages."""

    message: Any


class StreamLease:
    """One stream's claim on its camera; valid until a newer stream claims it."""

    def __init__(self, registry: CameraStreams, camera_id: str, peer: str) -> None:
        self.registry, self.camera_id, self.peer = registry, camera_id, peer
        self.replaced = asyncio.Event()
        self.started_ns = time.time_ns()
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()

    def send(self, message: Any) -> None:
        """Queue a message for the edge (on the event loop); the stream yields it next."""
        self.outbox.put_nowait(message)

    def check(self) -> None:
        if self.replaced.is_set():
            raise StreamReplaced(
                f"camera {self.camera_id}: replaced by a newer stream of the same camera; "
                "frames not acknowledged here are to be replayed"
            )

    async def messages(self, requests: AsyncIterator[T]) -> AsyncIterator[T | Outgoing]:
        """The stream's messages until it ends or is replaced (then StreamReplaced), and
        between them what was ``send``-queued for the edge, as Outgoing."""
        it = aiter(requests)
        replaced = asyncio.ensure_future(self.replaced.wait())
        read: asyncio.Future[T] | None = None
        outgoing: asyncio.Future[Any] | None = None
        try:
            while True:
                self.check()
                # A pending read is kept across outgoing messages, never cancelled for one.
                read = read or asyncio.ensure_future(anext(it))
                outgoing = outgoing or asyncio.ensure_future(self.outbox.get())
                waiting: set[asyncio.Future[Any]] = {read, replaced, outgoing}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if outgoing.done():
                    message_out, outgoing = outgoing.result(), None
                    yield Outgoing(message_out)
                    continue
                if not read.done():
                    self.check()
                    continue
                done, read = read, None
                try:
                    message = done.result()
                except StopAsyncIteration:
                    return
                self.check()  # read and replaced at once: the message is not taken
                yield message
        finally:
            replaced.cancel()
            for pending in (read, outgoing):
                if pending is not None:
                    pending.cancel()

    async def run(self, fn: Callable[..., T], *args: object, executor: Executor | None = None) -> T:
        """Run one frame's blocking ingest in a thread (``executor``, default asyncio's);
        StreamReplaced instead of its result if the stream was replaced meanwhile (so
        nothing is acked late)."""
        self.check()
        loop = asyncio.get_running_loop()
        work = asyncio.ensure_future(loop.run_in_executor(executor, functools.partial(fn, *args)))
        self.registry.in_flight.setdefault(self.camera_id, set()).add(work)
        work.add_done_callback(lambda w: self.registry.forget(self.camera_id, w))
        # Shielded: a cancelled stream must not look idle while its thread still stores.
        result = await asyncio.shield(work)
        self.check()
        return result


class CameraStreams:
    def __init__(self) -> None:
        self.live: dict[str, StreamLease] = {}
        self.in_flight: dict[str, set[asyncio.Future[Any]]] = {}

    async def claim(self, camera_id: str, peer: str = "") -> StreamLease:
        """Make a new stream the camera's live one: the older is replaced, and this
        returns once no frame of the camera is being stored any more."""
        lease = StreamLease(self, camera_id, peer)
        older = self.live.get(camera_id)
        self.live[camera_id] = lease
        if older is not None:
            log.warning(
                "camera %s: a new stream from %s replaces the one from %s",
                camera_id, peer or "?", older.peer or "?",
            )  # fmt: skip
            older.replaced.set()
        pending = self.in_flight.get(camera_id)
        if pending:
            await asyncio.wait(set(pending))
        return lease

    def release(self, lease: StreamLease) -> None:
        if self.live.get(lease.camera_id) is lease:
            del self.live[lease.camera_id]

    def forget(self, camera_id: str, work: asyncio.Future[Any]) -> None:
        pending = self.in_flight.get(camera_id)
        if pending is not None:
            pending.discard(work)
            if not pending:
                del self.in_flight[camera_id]
