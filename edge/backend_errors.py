"""The one error an encoder backend raises when it cannot run here.

Its own module so the backend registry (encoder_backends), the TensorRT engines and the
CUDA memory helpers can all raise it without importing each other.
"""

from __future__ import annotations


class BackendUnavailable(ValueError):
    """A backend whose packages or device are missing here.

    A ValueError, like any other bad setting: the CLI reports it as a message
    that names the ``backend`` field, not as a traceback.
    """
