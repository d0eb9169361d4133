"""Structured logs: one JSON object per line with the ``extra`` fields on top."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.logging_setup import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_extra_fields_and_exceptions() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("edge.uplink")
    log.info("frame %d acked", 7, extra={"camera": "gate-1", "sequence": 7, "spool": Path("/s")})
    log.debug("not shown at INFO")
    try:
        raise ConnectionError("link down")
    except ConnectionError:
        log.exception("reconnecting", extra={"camera": "gate-1"})

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "INFO"
    assert first["logger"] == "edge.uplink"
    assert first["message"] == "frame 7 acked"
    assert (first["camera"], first["sequence"], first["spool"]) == ("gate-1", 7, "/s")
    assert first["timestamp"].endswith("+00:00")  # UTC, ISO 8601
    assert "args" not in first and "msg" not in first  # no LogRecord internals
    assert lines[1]["level"] == "ERROR"
    assert "ConnectionError: link down" in lines[1]["exception"]


def test_calling_again_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    text, js = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=text)
    setup_logging("WARNING", "json", stream=js)  # e.g. edge run: log_format json in its YAML
    logging.getLogger("x").warning("once")
    assert text.getvalue() == ""
    assert json.loads(js.getvalue())["message"] == "once"
    assert foreign in root.handlers
    root.removeHandler(foreign)


def test_text_format_and_bad_format() -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", stream=out)
    logging.getLogger("cloud.server").info("ready")
    assert " INFO cloud.server: ready" in out.getvalue()
    with pytest.raises(ValueError, match="log format 'xml'"):
        setup_logging("INFO", "xml")
