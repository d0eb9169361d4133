"""Reference latents: what each camera's next P-frame is predicted from.

    P-frame (camera, s) names frame s − n and its symbol CRC (codec/bitstream.py)
        │
        ├─► latest[camera] is frame s − n ──────────────────────────────► its symbols
        └─► not held (cloud restart, another replica stored it, a view of an old frame)
              ─► walk the stored bitstreams back from s − n to their keyframe
              ─► decode forward, each against the one before ──────────► symbols of s − n

Every stored frame's chain ends at a keyframe the store also holds: ingest stores a
P-frame only after decoding it against its reference, so anything stored can be
decoded again, on any replica, from the bitstreams alone. The cache holds one latent
per camera (the newest stored): the live stream needs nothing else.
"""

from __future__ import annotations

import threading

from cloud.frame_decoder import DecodedFrame, FrameDecoder, MissingReference
from cloud.store.frame_store import FrameStore
from cloud.store.records import FrameRecord
from codec.bitstream import FrameBitstream
from codec.inter_frames import LatentSymbols

MAX_CHAIN = 10_000
"""Longest P-frame chain rebuilt from the store (the edge keys every 50 by default)."""


class LatentReferences:
    def __init__(
        self, decoder: FrameDecoder, store: FrameStore, max_chain: int = MAX_CHAIN
    ) -> None:
        self.decoder, self.store, self.max_chain = decoder, store, max_chain
        self._latest: dict[str, tuple[int, LatentSymbols]] = {}
        self._lock = threading.Lock()

    def reference_for(
        self, camera_id: str, sequence: int, frame: FrameBitstream
    ) -> LatentSymbols | None:
        """The latent ``frame`` (camera's ``sequence``) is predicted from; None for a
        keyframe. Raises MissingReference when the store cannot rebuild it."""
        if frame.reference is None:
            return None
        wanted = sequence - frame.reference.offset
        with self._lock:
            held = self._latest.get(camera_id)
        if held is not None and held[0] == wanted and held[1].crc == frame.reference.symbol_crc:
            return held[1]
        return self.decode_stored(camera_id, wanted).symbols

    def remember(self, camera_id: str, sequence: int, symbols: LatentSymbols) -> None:
        """A frame was stored: it is the camera's newest reference (unless an older one)."""
        with self._lock:
            held = self._latest.get(camera_id)
            if held is None or held[0] <= sequence:
                self._latest[camera_id] = (sequence, symbols)

    def decode_stored(
        self, camera_id: str, sequence: int, record: FrameRecord | None = None
    ) -> DecodedFrame:
        """Decode the stored frame ``sequence`` of ``camera_id``, from its keyframe on
        (``record``: its row, when the caller already holds it)."""
        chain: list[FrameBitstream] = []
        at = sequence
        while True:
            if record is None or chain:
                record = self.store.find_frame(camera_id, at)
            if record is None:
                first = "" if not chain else f" (on the chain of frame {sequence})"
                raise MissingReference(
                    f"frame {at} of camera {camera_id} is not stored{first}: "
                    "a P-frame cannot be decoded without it; the camera must send a keyframe"
                )
            frame = self.decoder.parse(self.store.read_bitstream(record))
            chain.append(frame)
            if frame.reference is None:
                break
            if len(chain) > self.max_chain:
                raise MissingReference(
                    f"frame {sequence} of camera {camera_id}: no keyframe within {self.max_chain} "
                    "frames of it"
                )
            at -= frame.reference.offset
        reference: LatentSymbols | None = None
        decoded: DecodedFrame | None = None
        for frame in reversed(chain):
            decoded = self.decoder.decode_parsed(frame, stored=True, reference=reference)
            reference = decoded.symbols
        assert decoded is not None
        return decoded
