"""Which decoded images are photographs: the filter for resource bundles full of art.

GCompris' ``.rcc`` files hold about 3,500 images, mostly SVG drawings, sprites with
transparency and clip art; its real photos sit in a few activities (monuments, animals,
instruments, the categorisation sets, the erase game's backgrounds). A member is kept
when all of these hold:

1. it is a raster image (JPEG, PNG, WebP) under one of ``PHOTO_ACTIVITIES``;
2. it is opaque: at most 1% of its pixels are transparent (sprites and cut-outs are not);
3. its short side is at least ``MIN_SIDE`` pixels (icons are not);
4. the 8 most frequent colours (5 bits a channel) cover at most ``MAX_FLAT`` of it:
   drawings are a few flat colours, photos spread over thousands (and a photo on a
   plain white background, a tool cut out for a catalogue, is cut at 0.8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHOTO_ACTIVITIES = (
    "categorization",
    "erase",
    "explore_farm_animals",
    "explore_monuments",
    "explore_world_animals",
    "explore_world_music",
    "louis-braille",
)
RASTER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIN_SIDE = 200
MAX_FLAT = 0.8
MAX_TRANSPARENT = 0.01


@dataclass(frozen=True)
class PhotoStats:
    width: int
    height: int
    transparent: float
    """Fraction of pixels with alpha < 250."""
    flat: float
    """Fraction of pixels in the 8 most frequent colours (5 bits a channel)."""


def photo_stats(image: np.ndarray) -> PhotoStats:
    """Statistics of a decoded image: (H, W) grey, (H, W, 3) or (H, W, 4) with alpha."""
    if image.ndim == 2:
        image = image[:, :, None]
    h, w, channels = image.shape
    transparent = float((image[:, :, 3] < 250).mean()) if channels == 4 else 0.0
    colour = np.repeat(image, 3, axis=2) if channels == 1 else image[:, :, :3]
    q = (colour >> 3).reshape(-1, 3).astype(np.int64)
    counts = np.bincount(q[:, 0] << 10 | q[:, 1] << 5 | q[:, 2])
    flat = float(np.sort(counts)[::-1][:8].sum() / q.shape[0])
    return PhotoStats(w, h, transparent, flat)


def in_photo_activity(resource_path: str) -> bool:
    """``gcompris/src/activities/<activity>/…`` with a raster suffix."""
    parts = resource_path.split("/")
    if not resource_path.lower().endswith(RASTER_SUFFIXES) or "activities" not in parts:
        return False
    at = parts.index("activities")
    return at + 1 < len(parts) and parts[at + 1] in PHOTO_ACTIVITIES


def is_photo(stats: PhotoStats) -> bool:
    return (
        stats.transparent <= MAX_TRANSPARENT
        and min(stats.width, stats.height) >= MIN_SIDE
        and stats.flat <= MAX_FLAT
    )
