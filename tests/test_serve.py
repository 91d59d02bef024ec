"""`rllib-rec serve` as a real subprocess on loopback: valid and invalid requests over HTTP, and the
serving process must not have imported TensorFlow, torch, Keras or Ray.

The model comes from the session fixture `exported` (conftest.py).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import short, start_serve

ROOT = pathlib.Path(__file__).parent.parent


def _cli() -> list[str]:
    script = pathlib.Path(sys.executable).parent / "rllib-rec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rllib_rec"]


def _call(base: str, path: str, body: object | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"},
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(exported):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    port, proc = start_serve([*_cli(), "serve", "--model", str(exported / "model.tflite")], env)
    base = f"http://127.0.0.1:{port}"
    yield base, proc
    proc.terminate()
    proc.wait(timeout=10)


def test_health_and_no_heavy_imports(server, exported) -> None:
    base, proc = server
    status, body = _call(base, "/health")
    assert status == 200 and body["status"] == "ok" and body["pid"] == proc.pid
    assert body["heavy_modules_loaded"] == {"tensorflow": False, "torch": False, "keras": False, "ray": False}
    side = json.loads((exported / "model.json").read_text())
    assert body["n_items"] == side["n_items"] and body["history_length"] == side["history_length"]
    assert body["sha256"] == side["sha256"] and body["networks"] == 1
    # Belt and braces: no TF/torch shared library is mapped into the process either.
    maps = pathlib.Path(f"/proc/{proc.pid}/maps")
    if maps.exists():
        text = maps.read_text()
        assert "libtensorflow" not in text and "libtorch" not in text


def test_recommend_ranks_candidates(server, exported) -> None:
    base, _ = server
    n = json.loads((exported / "model.json").read_text())["n_items"]
    status, body = _call(base, "/recommend", {"items": [1, 2, 2], "events": ["view", "click", "purchase"], "k": 5})
    assert status == 200
    recs = body["recommendations"]
    assert len(recs) == 5 and len({r["item"] for r in recs}) == 5
    assert all(0 <= r["item"] < n for r in recs)
    assert [r["q"] for r in recs] == sorted((r["q"] for r in recs), reverse=True)

    # Event names and codes are the same thing; candidates restrict the ranking; k caps at len(candidates).
    status, by_code = _call(base, "/recommend", {"items": [1, 2, 2], "events": [3, 4, 5], "k": 5})
    assert by_code["recommendations"] == recs
    status, body = _call(base, "/recommend", {"items": [1, 2, 2], "events": [3, 4, 5], "candidates": [0, 3, 4],
                                              "k": 10})
    assert status == 200 and sorted(r["item"] for r in body["recommendations"]) == [0, 3, 4]

    # Cold start (empty history) is allowed.
    status, body = _call(base, "/recommend", {"items": [], "events": [], "k": 1})
    assert status == 200 and len(body["recommendations"]) == 1


def test_long_history_is_truncated_to_the_most_recent(server, exported) -> None:
    base, _ = server
    t = json.loads((exported / "model.json").read_text())["history_length"]
    items = [i % 7 for i in range(t + 5)]
    events = [3 + i % 3 for i in range(t + 5)]
    status, full = _call(base, "/recommend", {"items": items, "events": events, "k": 3})
    _, recent = _call(base, "/recommend", {"items": items[-t:], "events": events[-t:], "k": 3})
    assert status == 200 and full["truncated"] and not recent["truncated"]
    assert full["recommendations"] == recent["recommendations"] and full["history_used"] == t


@pytest.mark.parametrize("body,needle", [
    ({"items": [1, 999], "events": [3, 4]}, "items[1]: unknown item id 999"),
    ({"items": [-1], "events": [3]}, "items[0]: unknown item id -1"),
    ({"items": [1, 2], "events": [3]}, "items and events must have the same length, got 2 and 1"),
    ({"items": [1], "events": ["klick"]}, "events[0]: unknown event 'klick'"),
    ({"items": [1], "events": [0]}, "events[0]: unknown event code 0"),
    ({"items": [1], "events": [9]}, "events[0]: unknown event code 9"),
    ({"items": [1], "events": [3], "candidates": []}, "candidates: must not be empty"),
    ({"items": [1], "events": [3], "candidates": [1, 1]}, "candidates: item id 1 appears more than once"),
    ({"items": [1], "events": [3], "candidates": [5000]}, "candidates[0]: unknown item id 5000"),
    ({"items": [1], "events": [3], "k": 0}, "k: must be an integer in 1.."),
    ({"items": [1], "events": [3], "k": 10_000}, "k: must be an integer in 1.."),
    ({"items": ["a"], "events": [3]}, "items[0]: Input should be a valid integer"),
    ({"items": [1.5], "events": [3]}, "items[0]: Input should be a valid integer"),
    ({"events": [3]}, "items: Field required"),
    ({"items": [1], "events": [3], "user": "x"}, "user: Extra inputs are not permitted"),
])
@pytest.mark.hostile("HTTP", describe=lambda body, needle: (f"`{short(json.dumps(body))}`",
                                                             f"422: `{short(needle)}`"))
def test_invalid_requests_get_422_with_a_clear_message(server, body, needle) -> None:
    status, resp = _call(server[0], "/recommend", body)
    assert status == 422 and needle in resp["detail"], resp


def test_malformed_json_is_422(server) -> None:
    status, resp = _call(server[0], "/recommend", raw=b"{not json")
    assert status == 422 and "not valid JSON" in resp["detail"]


def test_bad_model_path_is_a_one_line_error(tmp_path) -> None:
    proc = subprocess.run([*_cli(), "serve", "--model", str(tmp_path / "missing.tflite")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rllib-rec serve: error: {tmp_path / 'missing.tflite'}: no such model file"
