"""The edge never imports torch: run the agent's import path in a fresh interpreter."""

import subprocess
import sys

CODE = """
import sys
import edge.agent, edge.uplink, edge.frame_encoder, edge.sources, edge.encoder_backends
import edge.rate_control, edge.spool
import edge.channel, edge.metrics, infra.logging_setup
import edge.frame_queue, edge.tensorrt_engines, edge.cuda_memory
import fchm.cli
heavy = sorted(m for m in ("torch", "torchvision", "ultralytics", "fastapi", "sqlalchemy")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_edge_agent_loads_no_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
