"""CameraStreams: the newest stream of a camera replaces the older one, which acks
nothing more, and the newer one starts only after the older one's frame is stored."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from cloud.camera_streams import CameraStreams, StreamReplaced


async def endless(gate: asyncio.Event) -> AsyncIterator[int]:
    yield 1
    await gate.wait()  # a half-open stream: nothing more arrives
    yield 2


def test_a_newer_stream_waits_for_the_older_ones_frame_which_is_not_acked() -> None:
    async def scenario() -> list[str]:
        streams = CameraStreams()
        events: list[str] = []
        old = await streams.claim("cam", "edge-old")
        storing, release = threading.Event(), threading.Event()

        def store() -> str:  # the blocking ingest of one frame, in a thread
            storing.set()
            release.wait(5)
            events.append("old frame stored")
            return "stored"

        frame = asyncio.ensure_future(old.run(store))
        await asyncio.to_thread(storing.wait, 5)
        claim = asyncio.ensure_future(streams.claim("cam", "edge-new"))
        await asyncio.sleep(0.05)
        assert not claim.done()  # still storing: the newer stream waits
        release.set()
        new = await claim
        events.append("new stream live")
        with pytest.raises(StreamReplaced, match="camera cam: replaced by a newer stream"):
            await frame  # stored, but the replaced stream does not ack it
        with pytest.raises(StreamReplaced):
            await old.run(store)  # and starts nothing more
        assert await new.run(lambda: "acked") == "acked"
        streams.release(old)  # the older one ending does not drop the newer one
        assert streams.live["cam"] is new
        streams.release(new)
        assert streams.live == {} and streams.in_flight == {}
        return events

    assert asyncio.run(scenario()) == ["old frame stored", "new stream live"]


def test_a_half_open_stream_stops_reading_when_replaced() -> None:
    async def scenario() -> list[int]:
        streams = CameraStreams()
        old = await streams.claim("cam")
        gate, got = asyncio.Event(), []

        async def read() -> None:
            async for message in old.messages(endless(gate)):
                got.append(message)

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.05)
        await streams.claim("cam")
        with pytest.raises(StreamReplaced):
            await asyncio.wait_for(reader, 2)
        gate.set()  # a message that arrives after the replacement is never taken
        await asyncio.sleep(0.05)
        return got

    assert asyncio.run(scenario()) == [1]


def test_streams_of_other_cameras_do_not_interfere() -> None:
    async def scenario() -> None:
        streams = CameraStreams()
        a, b = await streams.claim("a"), await streams.claim("b")
        a.check(), b.check()
        assert set(streams.live) == {"a", "b"}

    asyncio.run(scenario())
