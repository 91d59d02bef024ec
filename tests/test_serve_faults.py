"""`rllib-rec serve` under injected faults. Each test injects one and fails if the promise breaks:

* an oversized body (declared by Content-Length, or streamed chunked with no length) gets 413 with a
  one-line JSON detail, and is refused without being read to its end (the tests never finish sending it);
* out-of-range or ill-typed ids, too-long lists, malformed JSON: 4xx with a one-line detail, never 5xx;
* a hypothesis fuzz of POST /recommend: arbitrary JSON and bytes never get a 5xx, valid bodies get 200;
* a corrupt model file or sidecar is refused at start-up with one line naming the file, exit status 2,
  and the good export is never modified;
* (slow) a bounded open-loop load run of bench/serve_load.py: no 5xx, no connection errors.

The model comes from the session fixture `exported` (conftest.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import pathlib
import re
import select
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import short, start_serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).parent.parent
SMALL_LIMIT = 16_384  # --max-body-bytes of the subprocess server: exercises the CLI option, not the default
JSON_HEADERS = {"content-type": "application/json"}
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------- helpers
def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rllib_rec", "serve", *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _padded(obj: object, size: int) -> bytes:
    """`obj` as JSON, padded with trailing whitespace (still valid JSON) to exactly `size` bytes."""
    raw = json.dumps(obj).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def _assert_4xx(status: int, body: bytes) -> str:
    """A client error with a one-line JSON detail (what every refusal promises)."""
    assert 400 <= status < 500, (status, body[:300])
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and detail.strip() and "\n" not in detail and len(detail) < 1000, detail[:300]
    return detail


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off a raw socket (status, lower-cased headers, body by Content-Length)."""
    sock.settimeout(10)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-response"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/recommend", body=body, headers=JSON_HEADERS)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(exported) -> pathlib.Path:
    return exported / "model.tflite"


@pytest.fixture(scope="module")
def model_digest(model) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of the good export, taken before any fault test touches a copy of it."""
    return {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (model, model.with_suffix(".json"))}


@pytest.fixture(scope="module")
def sidecar(model) -> dict:
    return json.loads(model.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def rec(model):
    from rllib_rec.deploy.serve import Recommender

    return Recommender(model)


@pytest.fixture(scope="module")
def client(rec):
    """In-process app with the default body limit; server exceptions propagate (a 5xx fails loudly)."""
    from fastapi.testclient import TestClient

    from rllib_rec.deploy.serve import create_app

    with TestClient(create_app(rec)) as c:
        yield c


@pytest.fixture(scope="module")
def small_server(model):
    """`rllib-rec serve --max-body-bytes 16384` as a real subprocess on a free loopback port."""
    port, proc = start_serve(_serve_cmd("--model", str(model), "--max-body-bytes", str(SMALL_LIMIT)), _env())
    yield port, proc
    proc.terminate()
    proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- 1. body size
@pytest.mark.hostile("HTTP", rows=[("body of 65,537 bytes (64 KiB + 1), to any route", "413, one line; 65,536 bytes: 200")])
def test_default_limit_is_64_kib_and_the_boundary_is_exact(client) -> None:
    from rllib_rec.deploy.serve import DEFAULT_MAX_BODY_BYTES

    assert DEFAULT_MAX_BODY_BYTES == 64 * 1024
    at_limit = _padded({"items": [1], "events": [3], "k": 1}, DEFAULT_MAX_BODY_BYTES)
    r = client.post("/recommend", content=at_limit, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    r = client.post("/recommend", content=at_limit + b" ", headers=JSON_HEADERS)
    assert r.status_code == 413 and r.headers["connection"] == "close"
    assert "larger than 65536 bytes" in _assert_4xx(r.status_code, r.content)
    # Not only /recommend: the limit guards every route, before routing.
    r = client.post("/health", content=b"x" * (DEFAULT_MAX_BODY_BYTES + 1))
    assert r.status_code == 413


@pytest.mark.hostile("HTTP", rows=[("endless streamed (chunked) body", "413 after reading just past the limit")])
def test_endless_streamed_body_is_cut_off_at_the_limit(rec) -> None:
    """Driven as ASGI with a receive() that never ends the body: the app must answer 413 after reading
    just past the limit (TestClient would buffer a streamed body itself, so it cannot show this)."""
    from rllib_rec.deploy.serve import create_app

    app = create_app(rec, max_body_bytes=10_000)
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * 1000, "more_body": True}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    _assert_4xx(413, b"".join(m.get("body", b"") for m in sent[1:]))
    assert pulled == 11  # 11 x 1000 bytes is the first read past 10_000; nothing more was pulled


@pytest.mark.hostile("HTTP", rows=[("`Content-Length: 1000000000000`, 1 byte sent", "413 at once, connection closed"),
                                  ("`Expect: 100-continue` with an oversized Content-Length", "413, no 100 Continue")])
def test_declared_oversize_is_refused_before_the_body_is_sent(small_server) -> None:
    port, proc = small_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # A terabyte announced, one byte sent: the answer must come without waiting for the rest.
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000000\r\n\r\n{")
        status, headers, body = _read_response(s)
    assert status == 413 and headers["connection"] == "close"
    assert f"larger than {SMALL_LIMIT} bytes" in _assert_4xx(status, body)
    # The client that asks first (Expect: 100-continue, as curl does) is refused without a 100 Continue.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 20000\r\n\r\n")
        status, _, body = _read_response(s)
    assert status == 413
    assert proc.poll() is None


@pytest.mark.hostile("HTTP", rows=[("chunked body growing without end over a real socket",
                                   "413 while it streams, long before 4 MiB; the server keeps serving")])
def test_chunked_oversize_is_cut_off_while_still_streaming(small_server) -> None:
    port, proc = small_server
    chunk = b" " * 4096
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    cap = 256 * SMALL_LIMIT  # 4 MiB; the terminating chunk is never sent
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        while sent < cap:
            if select.select([s], [], [], 0.02)[0]:  # the server has answered mid-stream
                break
            try:
                s.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        status, headers, body = _read_response(s)
    assert status == 413 and headers["connection"] == "close"
    _assert_4xx(status, body)
    assert SMALL_LIMIT < sent < cap, sent  # answered after the limit was passed, long before the cap
    assert proc.poll() is None


def test_cli_limit_boundary_and_the_server_keeps_serving(small_server) -> None:
    port, proc = small_server
    at_limit = _padded({"items": [1, 2], "events": ["view", "click"], "k": 2}, SMALL_LIMIT)
    status, body = _post(port, at_limit)
    assert status == 200 and len(json.loads(body)["recommendations"]) == 2
    status, body = _post(port, at_limit + b" ")
    assert status == 413
    _assert_4xx(status, body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    conn.close()
    assert health["max_body_bytes"] == SMALL_LIMIT and proc.poll() is None
    assert not any(health["heavy_modules_loaded"].values())


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.hostile("CLI", describe=lambda value: (f"`serve --max-body-bytes {value}`",
                                                    "one line: must be a positive integer"))
def test_bad_max_body_bytes_is_a_one_line_error(model, value) -> None:
    proc = subprocess.run(_serve_cmd("--model", str(model), "--port", str(_free_port()), "--max-body-bytes",
                                     value), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rllib-rec serve: error: --max-body-bytes must be a positive integer, got {value}"


# ---------------------------------------------------------------------------------------------- 2. ids / types
def _bad_bodies(n: int) -> list[tuple[str, object]]:
    """(case id, body) for n items; every one must be refused with a 4xx."""
    bad_ids = {"negative": -1, "n_items": n, "huge": 10**30, "huge-negative": -(10**30), "int64-overflow": 2**63,
               "float-integral": 1.0, "float": 2.5, "bool": True, "string": "1", "null": None, "list": [1],
               "object": {"id": 1}}
    cases: list[tuple[str, object]] = []
    for name, v in bad_ids.items():
        cases.append((f"items-{name}", {"items": [0, v], "events": [3, 4]}))
        cases.append((f"candidates-{name}", {"items": [0], "events": [3], "candidates": [0, v]}))
    for name, v in {"zero": 0, "pad": "pad", "above": 6, "huge": 10**30, "bool": True, "float": 3.0, "null": None,
                    "unknown-name": "x" * 5000, "list": [3]}.items():
        cases.append((f"events-{name}", {"items": [0], "events": [v]}))
    for name, v in {"zero": 0, "negative": -1, "above": n + 1, "huge": 10**30, "bool": True, "float": 2.0,
                    "string": "2", "null": None}.items():
        cases.append((f"k-{name}", {"items": [0], "events": [3], "k": v}))
    cases += [
        ("candidates-longer-than-catalogue", {"items": [], "events": [], "candidates": list(range(n)) + [0]}),
        ("candidates-20000", {"items": [], "events": [], "candidates": [0] * 20_000}),
        ("candidates-empty", {"items": [], "events": [], "candidates": []}),
        ("lengths-differ", {"items": [0, 1], "events": [3]}),
        ("items-not-a-list", {"items": "0,1", "events": [3, 3]}),
        ("body-list", [0, 1]), ("body-string", "items"), ("body-number", 7), ("body-null", None), ("body-empty", {}),
        ("extra-field", {"items": [0], "events": [3], "user": 1}),
        ("extra-field-long-name", {"items": [0], "events": [3], "u" * 5000: 1}),
    ]
    return cases


RAW_BAD = [
    ("not-json", b"{not json"),
    ("truncated-json", b'{"items": [1, 2'),
    ("invalid-utf8", b'{"items": [1], "events": ["\xff\xfe"]}'),
    ("nan", b'{"items": [NaN], "events": [3]}'),
    ("infinity-k", b'{"items": [], "events": [], "k": Infinity}'),
    ("5000-digit-int", b'{"items": [' + b"9" * 5000 + b'], "events": [3]}'),  # over Python's int-parse limit
    ("deep-nesting", b"[" * 30_000 + b"]" * 30_000),
    ("lone-surrogate-key", b'{"\\ud800": 1, "items": [], "events": []}'),
    ("lone-surrogate-event", b'{"items": [1], "events": ["\\udfff"]}'),
    ("control-chars-key", b'{"a\\nb\\u0000": 1, "items": [], "events": []}'),
    ("empty", b""),
]


@pytest.mark.hostile("HTTP", rows=lambda: [(f"`{case}`: `{short(json.dumps(body), 60)}`",
                                           "422, one line naming the field")
                                          for case, body in _bad_bodies(10)])
def test_invalid_ids_types_and_lengths_get_4xx_with_one_line(client, sidecar) -> None:
    failures = []
    for case, body in _bad_bodies(sidecar["n_items"]):
        r = client.post("/recommend", content=json.dumps(body).encode(), headers=JSON_HEADERS)
        try:
            detail = _assert_4xx(r.status_code, r.content)
            assert r.status_code == 422, r.status_code
        except AssertionError as e:
            failures.append(f"{case}: {e}")
            continue
        if case.startswith(("items-", "candidates-", "events-", "k-")) and "-too-long" not in case:
            field = case.split("-")[0]
            if field not in detail:  # the line says which field is wrong
                failures.append(f"{case}: detail does not name {field!r}: {detail}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case,raw", RAW_BAD, ids=[c for c, _ in RAW_BAD])
@pytest.mark.hostile("HTTP", describe=lambda case, raw: (f"`{case}`: `{short(raw, 50)}`", "422, one line"))
def test_malformed_bodies_get_422_with_one_line(client, case, raw) -> None:
    """Every body that is not a valid request is 422, however it fails: deeply nested JSON (which makes the
    parser itself give up) was 400 (issue 18, item 9)."""
    r = client.post("/recommend", content=raw, headers=JSON_HEADERS)
    detail = _assert_4xx(r.status_code, r.content)
    assert r.status_code == 422, (r.status_code, r.text[:200])
    if case == "empty":
        assert detail == "body: empty (expected a JSON object)", detail


@pytest.mark.hostile("HTTP", rows=[("a 12,000-event history (within the body limit)",
                                   "200, truncated to the most recent history_length events; every id still checked")])
def test_a_long_history_within_the_body_limit_is_truncated_not_refused(client, sidecar) -> None:
    """The README says long histories are truncated; an undocumented cap of 10,000 events answered 422
    (issue 18, item 9). The body limit (413) is the only size limit."""
    n = 12_000
    body = {"items": [i % sidecar["n_items"] for i in range(n)], "events": [3] * n, "k": 2}
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["truncated"] is True and r.json()["history_used"] == sidecar["history_length"]
    h = sidecar["history_length"]
    recent = client.post("/recommend", json={"items": body["items"][-h:], "events": body["events"][-h:], "k": 2})
    assert recent.json()["recommendations"] == r.json()["recommendations"]
    # Every id is still checked, old ones included.
    r = client.post("/recommend", json={**body, "items": [sidecar["n_items"], *body["items"][1:]]})
    assert r.status_code == 422 and "items[0]" in r.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
@pytest.mark.hostile("HTTP", describe=lambda content_type: (
    f"valid JSON sent with Content-Type `{content_type or '(none)'}`", "415, one line, before the body is read"))
def test_a_body_that_is_not_declared_json_gets_415(client, content_type) -> None:
    """`text/plain` answered 422 "Input should be a valid dictionary" (issue 18, item 9); curl -d without a
    content-type header sends application/x-www-form-urlencoded."""
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/recommend", content=b'{"items": [1], "events": [3]}', headers=headers)
    detail = _assert_4xx(r.status_code, r.content)
    assert r.status_code == 415 and "Content-Type must be application/json" in detail, detail
    for ok in ("application/json; charset=utf-8", "application/vnd.api+json"):
        assert client.post("/recommend", content=b'{"items": [1], "events": [3]}',
                           headers={"content-type": ok}).status_code == 200


def test_415_is_decided_before_the_body_is_read(small_server) -> None:
    port, proc = small_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: 10000\r\n\r\n{")  # 1 byte of 10,000 sent
        status, headers, body = _read_response(s)
    assert status == 415 and headers["connection"] == "close" and "text/plain" in _assert_4xx(status, body)
    assert proc.poll() is None


def test_openapi_error_schema_is_what_the_server_sends(client) -> None:
    """The schema declared `detail` as an array (FastAPI's HTTPValidationError) while every error body is
    {"detail": "<one line>"} (issue 18, item 9): each declared 4xx of /recommend now points at a schema whose
    `detail` is a string, no schema declares a list of validation errors, and real 413/415/422 answers
    validate against the declared schema."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    responses = spec["paths"]["/recommend"]["post"]["responses"]
    assert {"413", "415", "422"} <= set(responses)
    for code in ("413", "415", "422"):
        ref = responses[code]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert schemas[ref]["properties"]["detail"]["type"] == "string" and schemas[ref]["required"] == ["detail"]
    assert not any(s.get("properties", {}).get("detail", {}).get("type") == "array" for s in schemas.values())
    from rllib_rec.deploy.serve import ErrorResponse

    answers = [client.post("/recommend", json={"items": [-1], "events": [3]}),
               client.post("/recommend", content=b"[" * 30_000, headers=JSON_HEADERS),
               client.post("/recommend", content=b"{}", headers={"content-type": "text/plain"}),
               client.post("/recommend", content=b" " * (70 * 1024), headers=JSON_HEADERS)]
    assert [a.status_code for a in answers] == [422, 422, 415, 413]
    for a in answers:
        ErrorResponse.model_validate_json(a.content, strict=True)


def test_no_page_needs_the_internet(client) -> None:
    """/docs loaded Swagger UI from a CDN and was blank offline (issue 18, item 9): interactive docs are off
    (a plain 404 instead of a blank page) and the schema itself is served."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = client.get(path)
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}, (path, r.status_code)
    r = client.get("/openapi.json")
    assert r.status_code == 200 and "/recommend" in r.json()["paths"]


def test_echoed_input_is_clipped(client) -> None:
    r = client.post("/recommend", json={"items": [10**30], "events": ["x" * 5000]})
    detail = _assert_4xx(r.status_code, r.content)
    assert len(detail) < 200 and "1000000000000000000000000000000" in detail


# ---------------------------------------------------------------------------------------------- 3. fuzz
_SCALARS = (st.none() | st.booleans() | st.integers() | st.sampled_from([10**30, -(10**30), 2**63, -1, 0])
            | st.floats() | st.text(max_size=12))
_JSON = st.recursive(_SCALARS, lambda kids: st.lists(kids, max_size=6)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=5), max_leaves=25)
_KEYS = ["items", "events", "candidates", "k"]


def _send(client, raw: bytes) -> None:
    r = client.post("/recommend", content=raw, headers=JSON_HEADERS)
    assert r.status_code < 500, (raw[:300], r.status_code, r.text[:300])
    if r.status_code != 200:
        _assert_4xx(r.status_code, r.content)


@FUZZ
@given(body=_JSON | st.dictionaries(st.sampled_from([*_KEYS, "user"]), _JSON, max_size=5))
@pytest.mark.hostile("HTTP", rows=[("hypothesis: 300 arbitrary JSON documents", "never 5xx; every 4xx one line")])
def test_fuzz_arbitrary_json_never_5xx(client, body) -> None:
    _send(client, json.dumps(body).encode())  # NaN/Infinity as the non-standard literals json.dumps writes


@FUZZ
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
@pytest.mark.hostile("HTTP", rows=[("hypothesis: 300 arbitrary byte strings and texts", "never 5xx; every 4xx one line")])
def test_fuzz_arbitrary_bytes_never_5xx(client, raw) -> None:
    _send(client, raw)


def _valid_body(data: st.DataObject, sidecar: dict) -> dict:
    """A request the API promises to answer: ids in range, known events (names or codes), unique
    candidates, k in 1..n_items; optional fields sometimes left out."""
    n, h, codes = sidecar["n_items"], sidecar["history_length"], sidecar["event_codes"]
    names = [name for name, code in codes.items() if code > 0]
    event = st.sampled_from(names) | st.sampled_from([codes[e] for e in names])
    length = data.draw(st.integers(0, h + 5), label="history length")
    body: dict = {"items": data.draw(st.lists(st.integers(0, n - 1), min_size=length, max_size=length)),
                  "events": data.draw(st.lists(event, min_size=length, max_size=length))}
    cands = data.draw(st.none() | st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    if cands is not None:
        body["candidates"] = cands
    k = data.draw(st.none() | st.integers(1, n))
    if k is not None:
        body["k"] = k
    return body


def _nasty(n: int) -> st.SearchStrategy:
    """Values just outside, or nowhere near, what a field accepts (edge cases drawn most often)."""
    edge = st.sampled_from([-1, n, n + 1, 10**30, -(10**30), 2**31, 2**63, True, False, 1.0, 0.5, float("nan"), "",
                            " ", "pad", "klick", "3", 0, 6, None, [], {}, [1], "x" * 300])
    return st.one_of(edge, edge, st.integers(-(2**70), 2**70), _SCALARS, _JSON)


@FUZZ
@given(data=st.data())
@pytest.mark.hostile("HTTP", rows=[("hypothesis: 300 valid bodies with one or two faults (edge values, extra "
                                   "fields, unbalanced lists)", "never 5xx; every 4xx one line")])
def test_fuzz_valid_looking_bodies_never_5xx(client, sidecar, data) -> None:
    """A valid body with one or two faults: a list element replaced or added (an edge value, arbitrary
    JSON, or a valid value that unbalances items/events), an element removed, a whole field replaced or
    dropped, an unknown field added. A fault or two at a time gets past the earlier checks, so every
    field's validation (and the encoding after it) is reached."""
    n, names = sidecar["n_items"], [k for k, v in sidecar["event_codes"].items() if v > 0]
    valid = {"items": st.integers(0, n - 1), "candidates": st.integers(0, n - 1),
             "events": st.sampled_from(names) | st.integers(1, len(names)), "k": st.integers(1, n)}
    body = _valid_body(data, sidecar)
    for _ in range(data.draw(st.integers(1, 2))):
        key = data.draw(st.sampled_from([*_KEYS, "extra"]))
        op = data.draw(st.sampled_from(["replace", "replace", "append-valid", "append", "remove", "whole", "drop"]))
        current = body.get(key)
        if key == "extra":
            body[data.draw(st.text(max_size=8))] = data.draw(_nasty(n))
        elif op == "drop":
            body.pop(key, None)
        elif op == "whole" or not isinstance(current, list):
            body[key] = data.draw(_nasty(n))
        elif op == "remove" and current:
            current.pop(data.draw(st.integers(0, len(current) - 1)))
        elif op in ("append", "append-valid") or not current:
            current.insert(data.draw(st.integers(0, len(current))),
                           data.draw(valid[key] if op == "append-valid" else _nasty(n)))
        else:
            current[data.draw(st.integers(0, len(current) - 1))] = data.draw(_nasty(n))
    _send(client, json.dumps(body).encode())


@FUZZ
@given(data=st.data())
def test_fuzz_valid_bodies_get_200(client, sidecar, data) -> None:
    n = sidecar["n_items"]
    body = _valid_body(data, sidecar)
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, (body, r.text)
    recs = r.json()["recommendations"]
    pool = set(body.get("candidates", range(n)))
    assert len(recs) == min(body.get("k", 10), len(pool))
    assert {x["item"] for x in recs} <= pool and len({x["item"] for x in recs}) == len(recs)
    assert [x["q"] for x in recs] == sorted((x["q"] for x in recs), reverse=True)
    assert r.json()["truncated"] == (len(body["items"]) > sidecar["history_length"])


# ---------------------------------------------------------------------------------------------- 4. bad model
def _truncate(n: int):
    return lambda d: (d / "model.tflite").write_bytes((d / "model.tflite").read_bytes()[:n])


def _random_same_size(keep_header: bool, digest: bool = True):
    def corrupt(d: pathlib.Path) -> None:
        p = d / "model.tflite"
        size = p.stat().st_size
        head = p.read_bytes()[:8] if keep_header else b""  # keep the TFL3 identifier: looks like a model
        p.write_bytes(head + os.urandom(size - len(head)))
        if not digest:  # a sidecar from before the digest: LiteRT's verifier is what refuses the file
            _drop(d, "sha256")
    return corrupt


def _flip_weight_byte(d: pathlib.Path) -> None:
    # One byte in the middle of the file (inside the weight buffers, which are most of it): the same size,
    # and without a digest LiteRT loads it and serves (checked by hand on a default export); only the
    # sidecar's digest tells.
    p = d / "model.tflite"
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    p.write_bytes(bytes(blob))


def _edit_sidecar(**changes):
    def corrupt(d: pathlib.Path) -> None:
        p = d / "model.json"
        meta = json.loads(p.read_text())
        meta.update(changes)
        p.write_text(json.dumps(meta))
    return corrupt


def _other_sidecar(d: pathlib.Path) -> None:
    # The sidecar of another export of the same checkpoint (fp16) next to the float model.
    fp16 = next(p for p in d.parent.iterdir() if p.suffix == ".json" and "fp16" in p.name)
    shutil.copyfile(fp16, d / "model.json")


CORRUPT = [  # (case, corruption of a copy of the export, faulty file, expected text)
    ("truncated-half", lambda d: _truncate((d / "model.tflite").stat().st_size // 2)(d), "model.tflite",
     "bytes, but its sidecar model.json says"),
    ("truncated-one-byte", lambda d: _truncate((d / "model.tflite").stat().st_size - 1)(d), "model.tflite",
     "(truncated, or not the file that sidecar describes)"),
    ("empty", _truncate(0), "model.tflite", "model file is empty"),
    ("random-bytes", _random_same_size(False), "model.tflite", "SHA-256"),
    ("random-bytes-no-digest", _random_same_size(False, digest=False), "model.tflite", "LiteRT cannot load it"),
    ("random-after-tflite-header-no-digest", _random_same_size(True, digest=False), "model.tflite",
     "LiteRT cannot load it"),
    ("flipped-weight-byte", _flip_weight_byte, "model.tflite", "SHA-256"),
    ("sidecar-wrong-sha256", _edit_sidecar(sha256="0" * 64), "model.tflite",
     "but its sidecar model.json says 0000000000000000..."),
    ("sidecar-missing", lambda d: (d / "model.json").unlink(), "model.json", "sidecar JSON missing"),
    ("sidecar-empty", lambda d: (d / "model.json").write_text(""), "model.json", "not an rllib-rec export sidecar"),
    ("sidecar-not-json", lambda d: (d / "model.json").write_bytes(b"\x00\xff garbage"), "model.json",
     "not an rllib-rec export sidecar"),
    ("sidecar-a-list", lambda d: (d / "model.json").write_text("[1, 2]"), "model.json", "a JSON list, not an object"),
    ("sidecar-wrong-format", _edit_sidecar(format="something-else/9"), "model.json", "format is 'something-else/9'"),
    ("sidecar-of-another-export", _other_sidecar, "model.tflite", "bytes, but its sidecar model.json says"),
    ("sidecar-wrong-n_candidates", _edit_sidecar(n_candidates=7), "model.tflite", "do not match the sidecar"),
    ("sidecar-missing-field", lambda d: _drop(d, "event_codes"), "model.json",
     "KeyError: 'event_codes'"),
]


def _drop(d: pathlib.Path, key: str) -> None:
    p = d / "model.json"
    meta = json.loads(p.read_text())
    del meta[key]
    p.write_text(json.dumps(meta))


def test_sidecar_format_matches_the_exporter() -> None:
    from rllib_rec.deploy.export import SIDECAR_FORMAT as written
    from rllib_rec.deploy.serve import SIDECAR_FORMAT as accepted

    assert accepted == written


@pytest.mark.parametrize("case,corrupt,faulty,needle", CORRUPT, ids=[c[0] for c in CORRUPT])
@pytest.mark.hostile("file", describe=lambda case, faulty, needle: (
    f"`serve --model`, {case.replace('-', ' ')}", f"exit 2, one line naming {faulty}: `{short(needle)}`"))
def test_corrupt_model_is_refused_at_load_with_one_line(model, model_digest, tmp_path, case, corrupt, faulty,
                                                        needle) -> None:
    d = tmp_path / "export" / "swapped"  # a copy next to the other exports' sidecars (for the fp16 case)
    d.mkdir(parents=True)
    for p in model.parent.iterdir():
        if p.suffix == ".json":
            shutil.copyfile(p, d.parent / p.name)
    shutil.copyfile(model, d / "model.tflite")
    shutil.copyfile(model.with_suffix(".json"), d / "model.json")
    corrupt(d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    proc = subprocess.run(_serve_cmd("--model", str(d / "model.tflite"), "--port", str(_free_port())),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "" and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"rllib-rec serve: error: {d / faulty}") and needle in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # refusing touches nothing
    after = {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (model, model.with_suffix(".json"))}
    assert after == model_digest  # the good export is never modified


@pytest.mark.parametrize("name", ["model.json", "debug.yaml"])
@pytest.mark.hostile("file", describe=lambda name: (
    f"`serve --model` given `{name}` (the sidecar, a config) instead of the `.tflite`", "exit 2, one line: not a .tflite model"))
def test_a_file_that_is_not_a_tflite_model_is_named_as_such(model, tmp_path, name) -> None:
    given = tmp_path / name
    shutil.copyfile(model.with_suffix(".json"), given)
    proc = subprocess.run(_serve_cmd("--model", str(given), "--port", str(_free_port())),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"rllib-rec serve: error: {given}: not a .tflite model (export writes model.tflite beside its sidecar .json)"


def test_sidecar_without_a_digest_is_checked_by_size_only(model, tmp_path) -> None:
    """Sidecars written before the digest existed still serve (the size check and LiteRT's verifier remain)."""
    from rllib_rec.deploy.serve import Recommender

    shutil.copyfile(model, tmp_path / "model.tflite")
    shutil.copyfile(model.with_suffix(".json"), tmp_path / "model.json")
    _drop(tmp_path, "sha256")
    rec = Recommender(tmp_path / "model.tflite")
    assert rec.info()["sha256"] is None and rec.recommend([1, 2], ["view", "click"], k=3)


def test_good_model_still_loads_after_the_faults(model, model_digest) -> None:
    from rllib_rec.deploy.serve import Recommender

    assert Recommender(model).recommend([1, 2], ["view", "click"], k=3)
    assert {p.name: (_sha256(p), p.stat().st_mtime_ns) for p in (model, model.with_suffix(".json"))} == model_digest


# ---------------------------------------------------------------------------------------------- 5. load (slow)
@pytest.mark.slow
def test_bounded_load_run_has_no_5xx_or_connection_errors(model) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--model", str(model),
                           "--rate", "100", "--duration", "10"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    rows = dict(re.findall(r"^\s*(requests sent|5xx|errors|2xx|4xx|wrong status)\s+(\d+)\s*$", out, re.M))
    assert set(rows) == {"requests sent", "2xx", "4xx", "5xx", "errors", "wrong status"}, out
    assert int(rows["5xx"]) == 0 and int(rows["errors"]) == 0 and int(rows["wrong status"]) == 0
    assert int(rows["requests sent"]) == 1000 and int(rows["2xx"]) > 0 and int(rows["4xx"]) > 0
    assert re.search(r"^\s*latency p50 ms\s+[\d.]+\s*$", out, re.M) and "latency p99 ms" in out


# ---------------------------------------------------------------------------------------------- fast path
def test_fast_path_answers_exactly_what_the_route_answers(rec, client) -> None:
    """A valid /recommend is answered by the fast path; the same app without it (the FastAPI route) gives the same
    answer, and an invalid body still gets the route's 422."""
    from fastapi.testclient import TestClient

    from rllib_rec.deploy.serve import RecommendFastPath, create_app

    route_app = create_app(rec)
    route_app.user_middleware = [m for m in route_app.user_middleware if m.cls is not RecommendFastPath]
    assert len(route_app.user_middleware) == len(client.app.user_middleware) - 1

    n, k = rec.n_items, rec.n_candidates
    bodies = [
        {"items": [1, 2, 2], "events": ["view", "click", "purchase"], "k": 5},
        {"items": [1, 2, 2], "events": [3, 4, 5], "candidates": [0, 3, 4], "k": 10},
        {"items": [i % n for i in range(rec.history_length + 7)], "events": [3] * (rec.history_length + 7)},
        {"items": [], "events": [], "candidates": list(range(min(n, k))), "k": 1},
    ]
    with TestClient(route_app) as route_only:
        for body in bodies:
            fast, slow = client.post("/recommend", json=body), route_only.post("/recommend", json=body)
            assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
            assert fast.json() == slow.json() and fast.headers["content-type"] == "application/json"
            assert json.loads(RecommendFastPath(None, rec)._answer(json.dumps(body).encode())) == slow.json()
    assert RecommendFastPath(None, rec)._answer(json.dumps({"items": [n], "events": [3]}).encode()) is None
    bad = client.post("/recommend", json={"items": [n], "events": [3]})
    assert bad.status_code == 422 and f"items[0]: unknown item id {n}" in bad.json()["detail"]
