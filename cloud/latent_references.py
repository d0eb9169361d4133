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
from dataclasses import dataclass

from cloud.frame_decoder import DecodedFrame, FrameDecoder, MissingReference, ReferenceFrame
from cloud.store.frame_store import FrameStore
from cloud.store.records import FrameRecord
from codec.bitstream import MAX_CHAIN, FrameReference


@dataclass(frozen=True)
class DecodedChain:
    decoded: DecodedFrame
    frames: int
    """bitstreams decoded: the frame's keyframe, the P-frames after it, the frame"""
    nbytes: int
    """their bytes"""


class LatentReferences:
    def __init__(
        self, decoder: FrameDecoder, store: FrameStore, max_chain: int = MAX_CHAIN
    ) -> None:
        self.decoder, self.store, self.max_chain = decoder, store, max_chain
        self._latest: dict[str, tuple[int, ReferenceFrame]] = {}
        self._lock = threading.Lock()

    def reference_for(
        self, camera_id: str, sequence: int, reference: FrameReference | None
    ) -> ReferenceFrame | None:
        """What the camera's frame ``sequence``, which names ``reference`` (None: a
        keyframe), is predicted from. Raises MissingReference when the store cannot
        rebuild it."""
        if reference is None:
            return None
        wanted = sequence - reference.offset
        with self._lock:
            held = self._latest.get(camera_id)
        if held is not None and held[0] == wanted and held[1].symbols.crc == reference.symbol_crc:
            return held[1]
        return self.decode_stored(camera_id, wanted).as_reference

    def remember(self, camera_id: str, sequence: int, reference: ReferenceFrame) -> None:
        """A frame was stored: it is the camera's newest reference (unless an older one)."""
        with self._lock:
            held = self._latest.get(camera_id)
            if held is None or held[0] <= sequence:
                self._latest[camera_id] = (sequence, reference)

    def decode_stored(
        self, camera_id: str, sequence: int, record: FrameRecord | None = None
    ) -> DecodedFrame:
        """Decode the stored frame ``sequence`` of ``camera_id``, from its keyframe on
        (``record``: its row, when the caller already holds it)."""
        return self.decode_chain(camera_id, sequence, record).decoded

    def decode_chain(
        self, camera_id: str, sequence: int, record: FrameRecord | None = None
    ) -> DecodedChain:
        """As :meth:`decode_stored`, with what the decode read: how many bitstreams, and
        their bytes (a view of a P-frame took its keyframe's bytes too)."""
        chain: list[bytes] = []
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
            data = self.store.read_bitstream(record)
            chain.append(data)
            named = self.decoder.peek_reference(data)
            if named is None:
                break
            if len(chain) > self.max_chain:
                raise MissingReference(
                    f"frame {sequence} of camera {camera_id}: no keyframe within {self.max_chain} "
                    "frames of it"
                )
            at -= named.offset
        # Forward from the keyframe: each frame against (and, version 5, with the header
        # of) the one before.
        reference: ReferenceFrame | None = None
        decoded: DecodedFrame | None = None
        for data in reversed(chain):
            decoded = self.decoder.decode(data, stored=True, reference=reference)
            reference = decoded.as_reference
        assert decoded is not None
        return DecodedChain(decoded, len(chain), sum(len(data) for data in chain))
