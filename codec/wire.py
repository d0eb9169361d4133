"""What both ends of the wire agree on beyond proto/fchm/v1/ingest.proto."""

from __future__ import annotations

import re

CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""Camera ids: also path segments of the cloud's blob store, so no '/', no leading '.'."""
CAMERA_ID = re.compile(CAMERA_ID_PATTERN)

REJECTED_SEQUENCE_KEY = "fchm-rejected-sequence"
"""Trailing metadata naming the frame behind an INVALID_ARGUMENT, so the edge drops that
frame instead of replaying it forever."""

MAX_IMAGE_SIDE = 8192
"""Largest width or height a frame may declare. The container's u16 fields allow 65535, but
no camera the edge serves is larger than 8K UHD (7680x4320), and anything the cloud sizes by
the source (a view, a box) must stay bounded: a 65535x65535 frame is 12.9 GB of RGB. The edge
refuses a larger frame before encoding it and the cloud refuses one at ingest."""
