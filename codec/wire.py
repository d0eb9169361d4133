"""What both ends of the wire agree on beyond proto/fchm/v1/ingest.proto."""

from __future__ import annotations

import re

CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""Camera ids: also path segments of the cloud's blob store, so no '/', no leading '.'."""
CAMERA_ID = re.compile(CAMERA_ID_PATTERN)

REJECTED_SEQUENCE_KEY = "fchm-rejected-sequence"
"""Trailing metadata naming the frame behind an INVALID_ARGUMENT, so the edge drops that
frame instead of replaying it forever."""
