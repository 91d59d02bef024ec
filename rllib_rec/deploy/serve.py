"""``rllib-rec serve``: an HTTP recommender over a ``.tflite`` export, with LiteRT and nothing heavier.

The serving process imports numpy, FastAPI/uvicorn and ``ai_edge_litert`` only — never TensorFlow, torch,
Keras or Ray (``GET /health`` reports which of those are in ``sys.modules`` at request time, and the
tests assert none is). Everything the API needs to know about the model (input names and shapes, item
vocabulary, history length, event codes) comes from the export's JSON sidecar, so this module does not
import ``envs`` or any other part of the training stack either.

API (JSON):

* ``POST /recommend`` ``{"items": [3, 7, 7], "events": ["view", "click", 5], "candidates": [1, 2, 9],
  "k": 2}`` -> ``{"recommendations": [{"item": 9, "q": 1.23}, ...], ...}``. ``items`` are item ids
  ``0..n_items-1``, oldest first; ``events`` the event of each (names or codes, see the sidecar's
  ``event_codes``; ``pad`` is not an event). A history shorter than the model's ``history_length`` is
  left-padded (as the simulator does), a longer one is truncated to its most recent ``history_length``
  events. ``candidates`` are the distinct item ids to rank — what a retrieval stage produced — at most the
  model's ``n_candidates`` (K) of them: the network scores K slots per call. They may be omitted only when
  the whole catalog fits in those slots (``n_items <= n_candidates``); then every item is ranked. ``k`` must
  be in ``1..K`` and at most ``len(candidates)`` items come back, best first (ties: lower id first).
* ``GET /health`` -> model facts and the heavy-import check.

Status codes (every error body is ``{"detail": "<one line>"}``, which is also what the OpenAPI schema at
``/openapi.json`` declares): 422 for a request that is not valid (a field, an id, an event, ``k``, or a body
that is not JSON, however malformed or deeply nested); 415 for a POST whose ``Content-Type`` is not JSON
(checked before the body is read); 413 for a body over ``max_body_bytes`` (default 64 KiB,
``--max-body-bytes``), decided from ``Content-Length`` before any of it is read, or for a streamed
(chunked) body as soon as the limit is passed, so an oversized body is never held in memory. That is the
only size limit: a history of any length that fits is accepted (every id and event is checked) and
truncated to its most recent ``history_length`` events. Swagger UI (``/docs``) and ReDoc are off: they
load their scripts from a CDN, so they would be blank offline; load ``/openapi.json`` into any OpenAPI
viewer instead. At start-up the ``.tflite``
is checked against its sidecar (format, byte size, SHA-256) and LiteRT's own verifier, so a truncated,
empty, corrupted or swapped file is refused with one line naming it. Inference (~20 µs) runs inline on the event
loop under a lock, so one interpreter is never entered by two threads; scale out with more processes
(see the README's Ray Serve section), not threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rllib_rec.console import verbose
from rllib_rec.errors import RequestError, ServeError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "HEAVY_MODULES",
    "SIDECAR_FORMAT",
    "BodyLimit",
    "ErrorResponse",
    "RequireJSON",
    "RecommendRequest",
    "Recommender",
    "RequestError",
    "ServeError",
    "create_app",
    "heavy_modules_loaded",
    "run_server",
]

HEAVY_MODULES = ("tensorflow", "torch", "keras", "ray")
# Ample for any useful request (a full history plus an explicit candidate list of a few thousand ids);
# anything bigger is a mistake or abuse, and is refused before it is read into memory.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# What rllib_rec.deploy.export writes; a copy, not an import, so serving stays off the training stack (a test
# checks the two agree).
SIDECAR_FORMAT = "rllib-rec-tflite/1"
_INPUTS = ("items", "events", "candidates", "candidate_mask")






def _show(value: Any, limit: int = 40) -> str:
    """repr() clipped to one short line: error messages echo client input, which may be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def heavy_modules_loaded() -> dict[str, bool]:
    """Which of TensorFlow/torch/Keras/Ray this process has imported (the serving contract: none)."""
    return {name: name in sys.modules for name in HEAVY_MODULES}


class _NativeStderr:
    """Collects what native code writes to file descriptor 2 while active (Python's sys.stderr included)."""

    text = ""

    def __enter__(self) -> _NativeStderr:
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile()
        try:
            self._saved: int | None = os.dup(2)
            os.dup2(self._tmp.fileno(), 2)
        except OSError:  # no fd 2 to redirect (a detached process): nothing to hold back
            self._saved = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()


class Recommender:
    """A LiteRT interpreter plus its sidecar: request validation, encoding and top-k ranking.

    Thread-safe: the interpreter (which must not be invoked concurrently) is used under a lock.
    """

    def __init__(self, model_path: str | os.PathLike[str], threads: int = 1) -> None:
        path = Path(model_path).expanduser()
        sidecar = path.with_suffix(".json")
        if path.is_dir():
            hint = f"; give the file: {path / 'model.tflite'}" if (path / "model.tflite").is_file() else ""
            raise ServeError(f"{model_path}: a directory, not a .tflite model{hint}")
        if not path.is_file():
            raise ServeError(f"{model_path}: no such model file")
        if path.suffix != ".tflite":
            raise ServeError(f"{model_path}: not a .tflite model (export writes model.tflite beside its sidecar .json)")
        if not sidecar.is_file():
            raise ServeError(f"{sidecar}: sidecar JSON missing (export writes it next to the .tflite)")
        if threads < 1:
            raise ServeError(f"--threads must be >= 1, got {threads}")
        try:
            self.meta: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(self.meta, dict):
                raise ValueError(f"a JSON {type(self.meta).__name__}, not an object")
            if self.meta.get("format") != SIDECAR_FORMAT:
                raise ValueError(f"format is {_show(self.meta.get('format'))}, expected {SIDECAR_FORMAT!r}")
            self.n_items = int(self.meta["n_items"])
            self.n_candidates = int(self.meta["n_candidates"])
            self.history_length = int(self.meta["history_length"])
            codes = {str(k): int(v) for k, v in self.meta["event_codes"].items()}
            signature = str(self.meta.get("signature", "serving_default"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ServeError(f"{sidecar}: not an rllib-rec export sidecar ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
        # Read once: the bytes checked below are the bytes LiteRT loads (no second read, no swap in between).
        # A truncated or swapped model file is caught here by its size, before LiteRT parses it; LiteRT's
        # flatbuffer verifier then refuses same-size garbage.
        blob = path.read_bytes()
        size = len(blob)
        if size == 0:
            raise ServeError(f"{model_path}: model file is empty")
        expected = self.meta.get("size_bytes")
        if expected != size:
            raise ServeError(f"{model_path}: {size} bytes, but its sidecar {sidecar.name} says "
                             f"{_show(expected)} (truncated, or not the file that sidecar describes)")
        # Same size is not same model: another export of the same architecture, or flipped weight bytes,
        # loads and answers. Sidecars written before the digest existed carry none and are checked by size.
        expected_sha = self.meta.get("sha256")
        if expected_sha is not None:
            digest = hashlib.sha256(blob).hexdigest()
            if digest != expected_sha:
                raise ServeError(f"{model_path}: SHA-256 {digest[:16]}..., but its sidecar {sidecar.name} says "
                                 f"{str(expected_sha)[:16]}... (corrupted, or not the file that sidecar describes)")
        self.event_codes = {k: v for k, v in codes.items() if v > 0}  # "pad" (0) is not an event
        self._event_by_name = {k.lower(): v for k, v in self.event_codes.items()}
        self._valid_codes = set(self.event_codes.values())
        self.path = path

        # LiteRT's C++ runtime logs straight to fd 2 (e.g. its XNNPACK note): held back while loading, so a
        # refused model is exactly one line of error, and replayed once the model has loaded (with --verbose).
        with _NativeStderr() as native:
            self._load(blob, model_path, signature, threads)
        if native.text and verbose():
            sys.stderr.write(native.text)

    def _load(self, blob: bytes, model_path: str | os.PathLike[str], signature: str, threads: int) -> None:
        """The interpreter, checked against the sidecar (ServeError naming the file if it does not fit)."""
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interp = Interpreter(model_content=blob, num_threads=int(threads))
            self._interp.allocate_tensors()
            runner = self._interp.get_signature_runner(signature)
            inputs = runner.get_input_details()
            outputs = runner.get_output_details()
        except Exception as e:  # noqa: BLE001 — LiteRT raises ValueError/RuntimeError for bad files
            raise ServeError(f"{model_path}: LiteRT cannot load it ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
        missing = [k for k in _INPUTS if k not in inputs]
        if missing or len(outputs) != 1:
            raise ServeError(f"{model_path}: signature {signature!r} lacks inputs {missing} or has "
                             f"{len(outputs)} outputs (expected items, events, candidates, candidate_mask -> one Q "
                             "output)")
        # Direct tensor access (set_tensor/invoke/get_tensor) by the signature's indices: the order of
        # the input tensors is not the declared order, and the signature runner adds ~10 µs per call.
        self._idx = {k: int(inputs[k]["index"]) for k in _INPUTS}
        self._out = int(next(iter(outputs.values()))["index"])
        shapes = {k: tuple(int(s) for s in inputs[k]["shape"]) for k in _INPUTS}
        expect = {"items": (1, self.history_length), "events": (1, self.history_length),
                  "candidates": (1, self.n_candidates), "candidate_mask": (1, self.n_candidates)}
        if shapes != expect:
            raise ServeError(f"{model_path}: input shapes {shapes} do not match the sidecar {expect}")
        self._lock = threading.Lock()
        self._buf = {k: np.zeros(expect[k], dtype=np.int32) for k in _INPUTS}

    # ------------------------------------------------------------------ validation / encoding
    def _event_code(self, i: int, e: Any) -> int:
        if isinstance(e, str):
            code = self._event_by_name.get(e.strip().lower())
            if code is None:
                raise RequestError(f"events[{i}]: unknown event {_show(e)} (use one of "
                                   f"{', '.join(self.event_codes)} or codes {sorted(self._valid_codes)})")
            return code
        if isinstance(e, bool) or not isinstance(e, int) or e not in self._valid_codes:
            raise RequestError(f"events[{i}]: unknown event code {_show(e)} (valid: {sorted(self._valid_codes)} = "
                               f"{', '.join(self.event_codes)})")
        return int(e)

    def _check_item(self, field: str, i: int, item: Any) -> int:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < self.n_items:
            raise RequestError(f"{field}[{i}]: unknown item id {_show(item)} (valid ids are 0..{self.n_items - 1})")
        return int(item)

    def _item_ids(self, field: str, ids: Sequence[Any]) -> np.ndarray:
        """[M] int64 of a list of item ids, each checked (RequestError naming the first bad one)."""
        # Plain ints in range (every well-formed request) are checked as one array; anything else is found, and
        # named, one id at a time. bool is not an int here, and neither are floats or strings numpy would cast.
        if set(map(type, ids)) <= {int}:
            try:
                arr = np.array(ids, dtype=np.int64)
            except OverflowError:  # beyond int64: out of range, named below
                arr = None
            if arr is not None and (len(arr) == 0 or (int(arr.min()) >= 0 and int(arr.max()) < self.n_items)):
                return arr
        return np.array([self._check_item(field, i, x) for i, x in enumerate(ids)], dtype=np.int64)

    def _event_codes(self, events: Sequence[Any]) -> list[int]:
        if set(map(type, events)) <= {int} and self._valid_codes.issuperset(events):
            return list(events)
        return [self._event_code(i, e) for i, e in enumerate(events)]

    def encode(self, items: Sequence[Any], events: Sequence[Any],
               candidates: Sequence[Any] | None) -> tuple[dict[str, np.ndarray], list[int]]:
        """Validates a request and returns the [1, *] int32 model inputs and the candidate ids."""
        if len(items) != len(events):
            raise RequestError(f"items and events must have the same length, got {len(items)} and {len(events)}")
        tokens = self._item_ids("items", items) + 1
        codes = self._event_codes(events)
        h = self.history_length
        tokens, codes = tokens[-h:], codes[-h:]  # most recent
        x_items = np.zeros((1, h), dtype=np.int32)
        x_events = np.zeros((1, h), dtype=np.int32)
        if len(codes):
            x_items[0, h - len(codes) :] = tokens
            x_events[0, h - len(codes) :] = codes
        cand = self._candidates(candidates)
        x_cands = np.zeros((1, self.n_candidates), dtype=np.int32)
        mask = np.zeros((1, self.n_candidates), dtype=np.int32)
        if self.n_items <= self.n_candidates:
            # The whole catalog fits: the layout the model was trained on (slot i holds item i).
            x_cands[0, : self.n_items] = np.arange(self.n_items)
            mask[0, cand] = 1
        else:
            x_cands[0, : len(cand)] = cand
            mask[0, : len(cand)] = 1
        return {"items": x_items, "events": x_events, "candidates": x_cands, "candidate_mask": mask}, cand

    def _candidates(self, candidates: Sequence[Any] | None) -> list[int]:
        if candidates is None:
            if self.n_items > self.n_candidates:
                raise RequestError(f"candidates: required (the catalog has {self.n_items} items and the model "
                                   f"ranks up to {self.n_candidates} per request; send your retrieval stage's "
                                   f"top {self.n_candidates})")
            return list(range(self.n_items))
        if len(candidates) == 0:
            raise RequestError("candidates: must not be empty")
        if len(candidates) > self.n_candidates:
            raise RequestError(f"candidates: at most {self.n_candidates} per request (the model scores "
                               f"{self.n_candidates} slots), got {len(candidates)}")
        cand = self._item_ids("candidates", candidates).tolist()
        if len(set(cand)) != len(cand):
            dup = next(c for i, c in enumerate(cand) if c in cand[:i])
            raise RequestError(f"candidates: item id {dup} appears more than once")
        return cand

    # ------------------------------------------------------------------ inference
    def q_values(self, x: dict[str, np.ndarray]) -> np.ndarray:
        """Q-values [n_candidates] of the slots of one encoded request (invalid slots are very negative)."""
        with self._lock:
            for k in _INPUTS:
                self._interp.set_tensor(self._idx[k], x[k])
            self._interp.invoke()
            return self._interp.get_tensor(self._out)[0].copy()

    def recommend(self, items: Sequence[Any], events: Sequence[Any], candidates: Sequence[Any] | None = None,
                  k: int = 10) -> list[dict[str, float | int]]:
        """Top-k candidates by Q-value, best first (RequestError on invalid input)."""
        top = min(self.n_items, self.n_candidates)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= top:
            raise RequestError(f"k: must be an integer in 1..{top}, got {_show(k)}")
        x, cand = self.encode(items, events, candidates)
        q = self.q_values(x)
        cand_arr = np.asarray(cand)
        slots = cand_arr if self.n_items <= self.n_candidates else np.arange(len(cand))
        qc = q[slots]
        order = np.lexsort((cand_arr, -qc))[:k]  # by Q descending, then id ascending
        return [{"item": i, "q": v} for i, v in zip(cand_arr[order].tolist(), qc[order].tolist(), strict=True)]

    def info(self) -> dict[str, Any]:
        return {
            "model": self.path.name,
            "quantization": self.meta.get("quantization"),
            "config_name": self.meta.get("config_name"),
            "config_hash": self.meta.get("config_hash"),
            "sha256": self.meta.get("sha256"),
            # >1: an ensemble export, whose Q-values are the mean of that many networks'.
            "networks": len(self.meta.get("members") or [None]),
            "n_items": self.n_items,
            "n_candidates": self.n_candidates,
            "history_length": self.history_length,
            "event_codes": self.event_codes,
        }


# ---------------------------------------------------------------------------------------------- HTTP
def _request_model():
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    class RecommendRequest(BaseModel):
        """Body of POST /recommend (range checks need the model, so they live in Recommender)."""

        model_config = ConfigDict(extra="forbid")
        # No length caps here: the body limit (413) bounds every list; a long history is truncated.
        items: list[StrictInt] = Field(description="item ids, oldest first (only the most recent "
                                       "history_length are used)")
        events: list[StrictInt | StrictStr] = Field(description="event of each item: name or code")
        candidates: list[StrictInt] | None = Field(default=None, description=(
            "item ids to rank, at most the model's n_candidates (default: every item, if they fit)"))
        k: StrictInt = Field(default=10, description="how many items to return")

    class ErrorResponse(BaseModel):
        """Every 4xx answer of the service."""

        detail: str = Field(description="what is wrong, in one line")

    return RecommendRequest, ErrorResponse


RecommendRequest, ErrorResponse = _request_model()


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 and never reaches the app or memory.

    A declared ``Content-Length`` over the limit is refused before any of the body is read (with
    ``Expect: 100-continue`` the client is not even asked to send it); otherwise the body is read here, at
    most ``max_bytes`` of it, and replayed to the app, so a chunked body is cut off as soon as it passes
    the limit. The 413 closes the connection: the rest of the body is left unread, so the connection
    cannot be reused.
    """

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:  # uvicorn rejects these itself; the running count below still holds
                    break
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away mid-body: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        # The buffered body once, then the server's own receive (which reports the disconnect).
        await self.app(scope, _replay({"type": "http.request", "body": b"".join(chunks), "more_body": False}, receive),
                       send)

    async def _refuse(self, send: Any) -> None:
        await _send_error(send, 413, f"request body larger than {self.max_bytes} bytes "
                                     "(the server's --max-body-bytes limit)")


async def _send_error(send: Any, status: int, detail: str) -> None:
    """A ``{"detail": ...}`` answer straight from ASGI middleware. It closes the connection: the request body
    was left unread, so the connection cannot carry another request."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class RequireJSON:
    """ASGI middleware: a POST to one of ``paths`` whose ``Content-Type`` is not JSON (``application/json`` or
    ``application/*+json``; a missing one included) gets 415 before its body is read. FastAPI would otherwise
    skip JSON parsing and answer 422 "Input should be a valid dictionary"."""

    def __init__(self, app: Any, paths: Sequence[str] = ("/recommend",)) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in self.paths:
            raw = next((v for k, v in scope.get("headers", ()) if k.lower() == b"content-type"), None)
            media = (raw or b"").decode("latin-1").split(";")[0].strip().lower()
            if not _is_json(media):
                got = f"got {_show(media)}" if raw is not None else "none given"
                await _send_error(send, 415, f"Content-Type must be application/json ({got})")
                return
        await self.app(scope, receive, send)


class RecommendFastPath:
    """ASGI middleware: a valid ``POST /recommend`` is answered here, in one pass (pydantic parses and checks the
    JSON body at once, the answer is written as bytes), without FastAPI's routing, dependency solving and response
    classes: a third of a request's time in the app. A body that fails any check is handed, unchanged, to the
    FastAPI route, so every error reads the same whichever way a request came in."""

    def __init__(self, app: Any, recommender: Recommender, path: str = "/recommend") -> None:
        self.app, self.recommender, self.path = app, recommender, path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "http.request" or message.get("more_body", False):  # BodyLimit sends the body whole
            await self.app(scope, _replay(message, receive), send)
            return
        answer = self._answer(message.get("body", b""))
        if answer is None:
            await self.app(scope, _replay(message, receive), send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer, "more_body": False})

    def _answer(self, body: bytes) -> bytes | None:
        """The 200 answer's bytes, or None for a request that is not valid (the FastAPI route answers it)."""
        try:
            answer = _recommendations(self.recommender, RecommendRequest.model_validate_json(body))
            return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        except (RequestError, ValueError):  # pydantic's ValidationError is a ValueError; so is a NaN Q (not JSON)
            return None


def _recommendations(recommender: Recommender, req: Any) -> dict[str, Any]:
    """The body of a 200 answer to ``req`` (a RecommendRequest); RequestError for ids, events or k it refuses."""
    recs = recommender.recommend(req.items, req.events, req.candidates, req.k)
    return {"recommendations": recs, "history_used": min(len(req.items), recommender.history_length),
            "truncated": len(req.items) > recommender.history_length}


def _replay(first: dict[str, Any], receive: Any) -> Any:
    """An ASGI ``receive`` that returns ``first`` once, then the server's own messages."""
    pending = [first]

    async def replay() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


def _loc(parts: Sequence[Any]) -> str:
    # A field name in the error comes from the client (an unknown key): clipped and escaped, so the detail
    # stays one short line and always encodes as UTF-8 (a lone surrogate in a key would not).
    # List positions read as the request checks write them: items[1], not items.1.
    out: list[str] = []
    for p in parts:
        if p == "body":
            continue
        if isinstance(p, int) and out:
            out[-1] += f"[{p}]"
            continue
        text = str(p) if isinstance(p, int) or str(p).isidentifier() else ascii(str(p))
        out.append(text if len(text) <= 40 else text[:37] + "...")
    return ".".join(out)


def _check_max_body_bytes(max_body_bytes: int) -> int:
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ServeError(f"--max-body-bytes must be a positive integer, got {max_body_bytes!r}")
    return max_body_bytes


def create_app(recommender: Recommender, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The FastAPI app (also what a Ray Serve deployment would wrap); bodies over max_body_bytes get 413."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    # No Swagger UI / ReDoc: both load their scripts from a CDN and are blank offline (module docstring).
    app = FastAPI(title="rllib-rec", description="Long-term-engagement recommendations from a TFLite Q-network",
                  docs_url=None, redoc_url=None)
    app.add_middleware(RecommendFastPath, recommender=recommender)
    app.add_middleware(BodyLimit, max_bytes=_check_max_body_bytes(max_body_bytes))
    app.add_middleware(RequireJSON)  # added last = runs first: 415 before the body is read
    started = time.time()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = []
        for err in exc.errors()[:5]:
            if err.get("type") == "json_invalid":
                msgs.append("body: not valid JSON")
                continue
            if err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",):
                msgs.append("body: empty (expected a JSON object)")
                continue
            msgs.append(f"{_loc(err.get('loc', ())) or 'body'}: {err.get('msg', 'invalid')}")
        return JSONResponse(status_code=422, content={"detail": "; ".join(msgs)})

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 "There was an error parsing the body" when the JSON parser itself fails (e.g.
        # RecursionError on deeply nested arrays); to a client that is a body that is not valid JSON: 422.
        if exc.status_code == 400:
            return JSONResponse(status_code=422, content={"detail": "body: not valid JSON (the parser gave up: "
                                                                    "malformed or nested too deeply)"})
        return JSONResponse(status_code=exc.status_code, content={"detail": " ".join(str(exc.detail).split())},
                            headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - started, 3), "pid": os.getpid(),
                **recommender.info(), "max_body_bytes": max_body_bytes,
                "heavy_modules_loaded": heavy_modules_loaded()}

    errors = {413: "body larger than --max-body-bytes", 415: "Content-Type is not application/json",
              422: "invalid request: a field, an id, an event, k, or a body that is not JSON"}

    @app.post("/recommend", response_model=None, responses={code: {"model": ErrorResponse, "description": what}
                                                            for code, what in errors.items()})
    async def recommend(req: RecommendRequest) -> JSONResponse:  # type: ignore[valid-type]
        # Inline on the event loop: ~0.1 ms of inference is cheaper than a thread-pool hop. The answer is plain
        # JSON types already, so it skips FastAPI's response encoding (a tenth of a millisecond per request).
        return JSONResponse(_recommendations(recommender, req))

    return app


def run_server(model: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Load the model and serve until interrupted (ServeError for a bad model or option)."""
    if not 0 <= int(port) <= 65535:
        raise ServeError(f"--port must be in 0..65535, got {port}")
    _check_max_body_bytes(max_body_bytes)
    rec = Recommender(model, threads=threads)
    import uvicorn

    try:  # fail with one line now rather than a uvicorn traceback/log after start-up
        with socket.create_server((host, int(port))):
            pass
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host}: the API has no authentication; put it behind a proxy", file=sys.stderr)
    print(f"serving {rec.path} ({rec.meta.get('quantization')}, {rec.n_items} items, {rec.n_candidates} "
          f"candidate slots, history "
          f"{rec.history_length}) on http://{host}:{port}  POST /recommend  GET /health", file=sys.stderr)
    uvicorn.run(create_app(rec, max_body_bytes), host=host, port=int(port), log_level="warning",
                access_log=False)

