"""What a newcomer meets on the REST side: newest-first lists with cursors both ways,
64-bit integers JavaScript can read, query parameters that take what the API outputs,
errors as RFC 9457 problem details, /docs without internet, and the README's commands
as written.

Runs over the same real SQLite store as test_rest_api.py (its ``api`` fixture).
"""

from __future__ import annotations

import base64
import http
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud.api.params import Order, encode_cursor
from codec.bundle import Bundle
from tests.conftest import sample_images
from tests.integration import test_rest_api
from tests.integration.stored_frames import STEP_NS, T0_NS, FrameMaker, open_store
from tests.integration.test_rest_api import Api, rest_client, walk

api = test_rest_api.api  # the same module-scoped fixture: a store of 12 real frames

LISTS = ["/v1/detections", "/v1/frames"]


def keys(items: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(i["time_ns"], i["id"]) for i in items]


# ── order=newest, cursors both ways ──────────────────────────────────────────


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("limit", [2, 1000])
def test_newest_first_is_the_exact_reverse_of_oldest_first(api: Api, path: str, limit: int) -> None:
    oldest = walk(api.client, path, limit=limit)
    newest = walk(api.client, path, limit=limit, order="newest")
    # Both cameras share capture times: the id must break ties the same way both ways.
    assert len({t for t, _ in keys(oldest)}) < len(oldest)
    assert keys(newest) == sorted(keys(oldest), reverse=True) == keys(oldest)[::-1]
    if limit == 1000:
        assert walk(api.client, path, limit=limit, order="oldest") == oldest  # the default


@pytest.mark.parametrize("path", LISTS)
def test_newest_first_with_filters(api: Api, path: str) -> None:
    window = {"camera": "cam-b", "since_ns": T0_NS + STEP_NS, "until_ns": T0_NS + 4 * STEP_NS}
    oldest = walk(api.client, path, limit=2, **window)
    newest = walk(api.client, path, limit=2, order="newest", **window)
    assert oldest and keys(newest) == keys(oldest)[::-1]
    assert all(i["camera"] == "cam-b" for i in newest)
    assert all(T0_NS + STEP_NS <= i["time_ns"] < T0_NS + 4 * STEP_NS for i in newest)


def test_newest_first_page_starts_at_the_latest_frame(api: Api) -> None:
    r = api.client.get("/v1/frames", params={"camera": "cam-a", "order": "newest", "limit": 1})
    (latest,) = r.json()["items"]
    assert latest["sequence"] == max(s.sequence for s in api.samples if s.camera == "cam-a")


@pytest.mark.parametrize("path", LISTS)
def test_a_cursor_only_pages_in_its_own_order(api: Api, path: str) -> None:
    for made, used in ((Order.newest, Order.oldest), (Order.oldest, Order.newest)):
        body = api.client.get(path, params={"limit": 1, "order": made.value}).json()
        r = api.client.get(path, params={"cursor": body["next_cursor"], "order": used.value})
        assert r.status_code == 400, r.text
        error = r.json()
        assert error["field"] == "cursor"
        assert f"order={made.value}" in error["detail"] and used.value in error["detail"]
    # A cursor from the default order needs no `order` to go on.
    body = api.client.get(path, params={"limit": 1}).json()
    assert api.client.get(path, params={"cursor": body["next_cursor"]}).status_code == 200


def test_cursors_from_before_order_existed_still_page_oldest_first(api: Api) -> None:
    first = api.client.get("/v1/frames", params={"limit": 1}).json()["items"][0]
    raw = json.dumps([first["time_ns"], first["id"]]).encode()
    legacy = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert legacy != encode_cursor(first["time_ns"], first["id"])
    r = api.client.get("/v1/frames", params={"cursor": legacy, "limit": 1000})
    assert keys(r.json()["items"]) == keys(walk(api.client, "/v1/frames"))[1:]


def test_an_unknown_order_names_the_choices(api: Api) -> None:
    r = api.client.get("/v1/detections", params={"order": "desc"})
    assert r.status_code == 422
    error = r.json()
    assert error["field"] == "order" and "oldest" in error["detail"]


# ── 64-bit integers JavaScript can read ──────────────────────────────────────


def int64_fields(item: dict[str, Any]) -> set[str]:
    return {k.removesuffix("_str") for k in item if k.endswith("_str")}


def test_every_64_bit_integer_has_an_exact_string_twin(api: Api) -> None:
    frame = api.client.get("/v1/frames", params={"limit": 1}).json()["items"][0]
    outputs = {
        "camera": api.client.get("/v1/cameras").json()["items"][0],
        "detection": api.client.get("/v1/detections", params={"limit": 1}).json()["items"][0],
        "frame": frame,
        "frame detail": api.client.get(f"/v1/frames/{frame['id']}").json(),
        "view": api.client.post("/v1/views", json={"frame_id": frame["id"]}).json(),
    }
    expected = {
        "camera": {"first_seen_ns", "last_seen_ns", "clock_offset_ns"},
        "detection": {"id", "frame_id", "time_ns"},
        "frame": {"id", "sequence", "time_ns", "received_time_ns"},
        "frame detail": {"id", "sequence", "time_ns", "received_time_ns"},
        "view": {"frame_id", "created_ns", "started_ns", "finished_ns", "deadline_ns"},
    }
    for name, item in outputs.items():
        assert int64_fields(item) == expected[name], name
        for field in expected[name]:
            value = item[field]
            assert item[f"{field}_str"] == (None if value is None else str(value)), (name, field)
    detection = outputs["frame detail"]["detections"][0]
    assert detection["time_ns_str"] == str(T0_NS) == frame["time_ns_str"]


def test_a_javascript_parser_reads_the_string_twin_exactly(api: Api) -> None:
    text = api.client.get("/v1/frames", params={"limit": 1}).text
    # JSON.parse turns every number into a float64; so does parse_int=float.
    as_js = json.loads(text, parse_int=float)["items"][0]
    exact = json.loads(text)["items"][0]
    assert T0_NS > 2**53 and int(as_js["received_time_ns"]) != exact["received_time_ns"]
    assert int(as_js["received_time_ns_str"]) == exact["received_time_ns"]


def test_openapi_states_int64_and_the_string_form(api: Api) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    detection = schemas["DetectionOut"]["properties"]
    assert detection["time_ns"]["type"] == "integer" and detection["time_ns"]["format"] == "int64"
    twin = detection["time_ns_str"]
    assert (twin["type"], twin["format"]) == ("string", "int64")
    assert "2^53" in twin["description"]
    assert "time_ns_str" in schemas["DetectionOut"]["required"]
    view = schemas["ViewOut"]["properties"]["started_ns_str"]
    assert {"type": "null"} in view["anyOf"]


def test_query_parameters_take_what_the_api_outputs(api: Api) -> None:
    frames = walk(api.client, "/v1/frames", camera="cam-a")
    third = frames[2]
    # since_ns/until_ns take time_ns (or its string); since takes the ISO `time`.
    by_ns = walk(api.client, "/v1/frames", camera="cam-a", since_ns=third["time_ns_str"])
    by_iso = walk(api.client, "/v1/frames", camera="cam-a", since=third["time"])
    assert keys(by_ns) == keys(by_iso) == keys(frames[2:])
    before = walk(api.client, "/v1/frames", camera="cam-a", until_ns=third["time_ns"])
    assert keys(before) == keys(frames[:2])
    assert api.client.get(f"/v1/frames/{third['id_str']}").json()["id"] == third["id"]
    # Bodies too: ids and sequences as strings, as a JavaScript client has them.
    for body in (
        {"frame_id": third["id_str"], "reuse": False},
        {"camera": "cam-a", "sequence": third["sequence_str"], "reuse": False},
    ):
        r = api.client.post("/v1/views", json=body)
        assert r.status_code == 202 and r.json()["frame_id"] == third["id"], r.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2023-11-14T22:13:20Z", "since_ns": T0_NS}, "since"),
        ({"until": "2023-11-14T22:13:20Z", "until_ns": T0_NS}, "until"),
        ({"since_ns": T0_NS, "until_ns": T0_NS}, "since"),
        ({"since_ns": "2023-11-14"}, "since_ns"),
        ({"until_ns": 2**63}, "until_ns"),
        ({"since": T0_NS}, "since"),  # a time_ns in the ISO parameter: says to use since_ns
    ],
)
def test_bad_ns_bounds_name_the_parameter(api: Api, params: dict[str, Any], field: str) -> None:
    r = api.client.get("/v1/frames", params=params)
    assert r.status_code in (400, 422), r.text
    error = r.json()
    assert error["field"] == field
    if "since" in params and "since_ns" not in params:
        assert "since_ns" in error["detail"]


# ── errors are RFC 9457 problem details ──────────────────────────────────────


@pytest.mark.parametrize(
    ("path", "params", "status", "slug", "title", "field"),
    [
        ("/v1/detections", {"since": "0001-01-01T00:00:00"}, 400, "bad-request", "Bad Request",
         "since"),
        ("/v1/frames/99999", {}, 404, "not-found", "Not Found", "frame_id"),
        ("/v1/detections", {"order": "desc"}, 422, "validation-error",
         http.HTTPStatus(422).phrase, "order"),
        ("/v1/frames", {}, 401, "unauthorized", "Unauthorized", None),
    ],
)  # fmt: skip
def test_errors_are_problem_details(
    api: Api,
    path: str,
    params: dict[str, Any],
    status: int,
    slug: str,
    title: str,
    field: str | None,
) -> None:
    client = TestClient(api.client.app) if status == 401 else api.client  # 401: no API key
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == f"https://fchm.dev/problems/{slug}"
    assert (problem["title"], problem["status"]) == (title, status)
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert problem["instance"] == path
    assert problem["field"] == field
    assert "error" not in problem and "message" not in problem
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer <key>" in problem["detail"]


def test_openapi_documents_errors_as_problem_json(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    errors = {
        (path, method, code): response
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for code, response in op["responses"].items()
        if (code == "default" or int(code) >= 400) and path != "/readyz"  # a 503 Readiness
    }
    assert {code for _, _, code in errors} >= {"400", "401", "403", "404", "422", "default"}
    for where, response in errors.items():
        assert list(response["content"]) == ["application/problem+json"], where
        schema = response["content"]["application/problem+json"]["schema"]
        assert set(schema["required"]) >= {"type", "title", "status", "detail", "instance"}
        assert schema["additionalProperties"] is True, where  # extension members
    # FastAPI's own 422 body (HTTPValidationError) is never sent, so never documented.
    assert "HTTPValidationError" not in spec["components"]["schemas"]


# ── /docs offline ────────────────────────────────────────────────────────────

ASSET_URL = re.compile(
    r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*['"]([^'"]+)['"]"""
)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_app(api: Api, page: str) -> None:
    anonymous = TestClient(api.client.app)  # the docs need no API key; the API calls do
    r = anonymous.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "://" not in r.text  # no CDN, no fonts, no validator badge
    urls = {a or b for a, b in ASSET_URL.findall(r.text)}
    scripts = {u for u in urls if u.endswith(".js")}
    assert scripts and "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), url
        asset = anonymous.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    if page == "/docs":
        assert any(u.endswith(".css") for u in urls)
        redirect = anonymous.get("/docs/oauth2-redirect")
        assert redirect.status_code == 200 and "://" not in redirect.text


def test_docs_routes_stay_out_of_the_api_schema_and_the_root_leads_there(api: Api) -> None:
    r = TestClient(api.client.app).get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/docs"
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


# ── the README, as written ───────────────────────────────────────────────────


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # bundles/mine is not there: the command stops at loading it
    return CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        "cloud serve --bundle bundles/mine --grpc-port 50051 --http-port 8000",
        "edge run --source rtsp://cam/stream --camera gate-1 --cloud 127.0.0.1:50051 --rate 3 "
        "--bundle bundles/mine",
    ],
)
def test_readme_commands_parse_and_reach_the_bundle(cli: CliRunner, command: str) -> None:
    from fchm.cli import app

    result = cli.invoke(app, command.split())
    assert result.exit_code == 2, result.output
    assert "error: no manifest.json in bundle directory bundles/mine" in result.output


@pytest.fixture(scope="module")
def gate(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A camera numbered as a real edge numbers it: from its first start's wall clock in µs."""
    root = tmp_path_factory.mktemp("gate")
    store = open_store(root, tiny_bundle, ["gate-1"])
    maker = FrameMaker(tiny_bundle)
    first = 1_796_286_220_970_530
    for k in range(3):
        maker.store(store, "gate-1", first + k, T0_NS + k * STEP_NS, sample_images()[0], level=2)
    with rest_client(store, tiny_bundle, root) as (client, _services):
        yield client


def test_readme_view_request_for_a_camera_gets_its_newest_frame(gate: TestClient) -> None:
    newest = gate.get("/v1/frames", params={"order": "newest", "limit": 1}).json()["items"][0]
    r = gate.post(
        "/v1/views", headers={"content-type": "application/json"}, content='{"camera": "gate-1"}'
    )
    assert r.status_code == 202, r.text
    assert r.json()["frame_id"] == newest["id"]


def test_readme_sequence_0_says_which_sequences_exist(gate: TestClient) -> None:
    body = '{"camera": "gate-1", "sequence": 0}'  # the README's body before this fix
    r = gate.post("/v1/views", headers={"content-type": "application/json"}, content=body)
    assert r.status_code == 404
    error = r.json()
    assert error["field"] == "sequence"
    for words in ("sequence 0", "1796286220970530", "1796286220970532", "omit 'sequence'"):
        assert words in error["detail"]
