"""A loopback HTTP server speaking the OpenAI and Ollama wire protocols (tests, benchmarks).

Use it to drive provider code through litellm without a network or a key::

    with FakeLLMServer(latency=0.2) as srv:
        scelmo.tl.embed_genes(adata, describe="openai/gpt-4o-mini",
                              embed="openai/text-embedding-3-small",
                              config={"describe.api_base": srv.openai_base,
                                      "embed.api_base": srv.openai_base})

Routes: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` (OpenAI),
``POST /api/embed``, ``/api/generate``, ``/api/chat`` (Ollama's native API), and
``GET /stats`` (the counters, for a server in another process). The
request's model name picks a behaviour (see :data:`BEHAVIOURS`); anything else
answers correctly (embeddings honour a request's ``dimensions`` unless
``honour_dimensions=False``). With ``api_key``
set, a request without ``Authorization: Bearer <api_key>`` gets 401. Every request is counted (``requests``), every answered item too
(``answered``: a duplicate there is a call paid twice).

Why a server of our own (measured by ``benchmarks/library_choices.py``): respx and
similar libraries replace the HTTP transport inside the process, so they would not
test litellm's real clients against a real socket, which the project's tests must.
pytest-httpserver (werkzeug) does serve a real socket, but it is a test-only dependency
and answered 104 requests/s through litellm at 32 in flight against 150 for this
standard-library server; this one also ships with the package (users and the
benchmarks drive providers offline with it, e.g. from another process via ``/stats``)
and already speaks every fault behaviour below by model name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: model name -> what the server does (``-N``: only the first N requests of that model)
BEHAVIOURS = {
    "ratelimit-N": "429 with Retry-After: 0",
    "ratelimit1s-N": "429 with Retry-After: 1",
    "error500-N": "500",
    "error503-N": "503",
    "unauthorized": "401, the key refused",
    "slow": "sleeps 3 s before answering (for timeouts)",
    "garbage": "200 with an HTML body",
    "badshape": "200 with JSON that is no completion / embedding response",
    "short": "one vector fewer than inputs",
    "badlen": "vectors of different lengths",
    "badindex": "repeated index",
    "nan": "a NaN inside a vector (sent as the JSON literal NaN)",
    "refuse": "a refusal text instead of a description",
    "empty": "an empty completion",
    "apologize": "an \"I apologize, but I cannot ...\" refusal",
    "zeros": "all-zero vectors",
    "drip": "200, then the body one byte every `drip_interval` s (never a read timeout)",
}
_ITEM = re.compile(r"(?:gene|cell type|drug|protein): (.+?)\.(?:\s|$)")


def fake_vector(text: str, dim: int) -> list[float]:
    """A deterministic unit-scale vector for ``text``."""
    out: list[float] = []
    counter = 0
    while len(out) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    return out[:dim]


def _item_of(prompt: str) -> str:
    m = _ITEM.search(prompt)
    return m.group(1) if m else prompt[:40]


class FakeLLMServer:
    """Start with ``with FakeLLMServer() as srv`` (or :meth:`start` / :meth:`stop`).

    Parameters
    ----------
    latency
        Seconds every request waits before answering (simulates a remote service).
    dim
        Length of the embedding vectors.
    block_after
        Answer this many items normally, then hold every further request until
        :meth:`release` (for kill-and-resume tests).
    api_key
        Require this bearer key (a gateway that needs one); others get 401.
    drip_interval
        Seconds between the body's bytes for the ``drip`` behaviour.
    honour_dimensions
        ``False``: embeddings have length ``dim`` whatever ``dimensions`` the request asks for.
    """

    def __init__(self, *, latency: float = 0.0, dim: int = 16, block_after: int | None = None,
                 api_key: str | None = None, drip_interval: float = 0.1,
                 honour_dimensions: bool = True) -> None:
        self.latency = latency
        self.dim = dim
        self.block_after = block_after
        self.api_key = api_key
        self.drip_interval = drip_interval
        self.honour_dimensions = honour_dimensions
        self.requests: Counter[str] = Counter()  # by route
        self.by_model: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # by item (prompt item or embedded text)
        self.auth_headers: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._aborted = False
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        handler = _make_handler(self)
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-llm", daemon=True).start()
        return self

    def stop(self) -> None:
        self._gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release(self) -> None:
        """Let held requests (``block_after``) go on."""
        self.block_after = None
        self._gate.set()

    def abort_held(self) -> None:
        """Answer held requests with 503, unanswered (their client was killed), then serve normally."""
        self._aborted = True
        self.release()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the server first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def duplicates(self) -> int:
        """Items answered more than once (calls paid twice)."""
        return sum(c - 1 for c in self.answered.values() if c > 1)

    # -- behaviour -----------------------------------------------------------------
    def _failure(self, model: str, n: int) -> tuple[int, Any, dict[str, str]] | None:
        base, _, limit = model.rpartition("-")
        if not base or not limit.isdigit():
            base, limit = model, ""
        if limit and n > int(limit):
            return None
        if base in ("ratelimit", "ratelimit1s"):
            wait = "1" if base == "ratelimit1s" else "0"
            return 429, {"error": {"message": "Rate limit exceeded", "type": "rate_limit_error"}}, {"Retry-After": wait}
        if base == "error500":
            return 500, {"error": {"message": "internal error", "type": "server_error"}}, {}
        if base == "error503":
            return 503, {"error": {"message": "overloaded, try again", "type": "server_error"}}, {}
        if base == "unauthorized":
            return 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}, {}
        return None

    def _hold(self, n_items: int) -> bool:
        """Wait while ``block_after`` holds; ``False`` when the held request was aborted."""
        if self.block_after is None:
            return True
        with self._lock:
            over = sum(self.answered.values()) + n_items > self.block_after
        if over:
            self._gate.wait()
            return not self._aborted
        return True

    def _record(self, items: list[str]) -> None:
        with self._lock:
            self.answered.update(items)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that hung up
        pass


def _make_handler(srv: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes: without this, Nagle + delayed ACK add
        # ~40 ms to every response
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any, ctype: str = "application/json", headers: dict[str, str] | None = None,
                  *, drip: bool = False) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not drip:
                    self.wfile.write(data)
                    return
                self.wfile.flush()
                for i in range(len(data)):  # every read gets a byte in time; the whole takes long
                    time.sleep(srv.drip_interval)
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.rstrip("/") != "/stats":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            with srv._lock:
                body = {"requests": dict(srv.requests), "answered_items": sum(srv.answered.values()),
                        "duplicates": srv.duplicates(), "max_in_flight": srv.max_in_flight}
            self._send(200, body)

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            try:
                req = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                return self._send(400, {"error": {"message": "bad json"}})
            model = str(req.get("model", "ok"))
            if srv.api_key is not None and self.headers.get("Authorization", "") != f"Bearer {srv.api_key}":
                with srv._lock:
                    srv.requests[self.path] += 1
                    srv.auth_headers.append(self.headers.get("Authorization", ""))
                return self._send(401, {"error": {"message": "Incorrect API key provided.",
                                                  "type": "invalid_request_error", "code": "invalid_api_key"}})
            with srv._lock:
                srv.requests[self.path] += 1
                srv.by_model[model] += 1
                n = srv.by_model[model]
                srv.auth_headers.append(self.headers.get("Authorization", ""))
                srv.bodies.append(req)
                srv._in_flight += 1
                srv.max_in_flight = max(srv.max_in_flight, srv._in_flight)
            try:
                self._route(req, model, n)
            finally:
                with srv._lock:
                    srv._in_flight -= 1

        def _route(self, req: dict[str, Any], model: str, n: int) -> None:
            path = self.path.rstrip("/")
            inputs = self._inputs(req, path)
            if not srv._hold(len(inputs)):
                return self._send(503, {"error": {"message": "aborted"}})
            if srv.latency:
                time.sleep(srv.latency)
            fail = srv._failure(model, n)
            if fail is not None:
                return self._send(fail[0], fail[1], headers=fail[2])
            if model == "slow":
                time.sleep(3)
            if model == "garbage":
                return self._send(200, b"<html>not json</html>", "text/html")
            if model == "badshape":
                return self._send(200, {"foo": "bar"})
            if path.endswith("/embeddings") or path == "/api/embed":
                return self._embeddings(req, model, inputs, ollama=path == "/api/embed")
            if path.endswith("/chat/completions") or path in ("/api/generate", "/api/chat"):
                return self._completion(model, inputs[0], path)
            return self._send(404, {"error": {"message": f"no route {self.path}"}})

        @staticmethod
        def _inputs(req: dict[str, Any], path: str) -> list[str]:
            if "input" in req:
                inp = req["input"]
                return [str(x) for x in (inp if isinstance(inp, list) else [inp])]
            if "messages" in req:
                return [str(req["messages"][-1].get("content", ""))]
            if "prompt" in req:
                return [str(req["prompt"])]
            return [""]

        def _embeddings(self, req: dict[str, Any], model: str, texts: list[str], *, ollama: bool) -> None:
            dim = srv.dim
            if isinstance(req.get("dimensions"), int) and srv.honour_dimensions:
                dim = req["dimensions"]
            vecs = [fake_vector(t, dim) for t in texts]
            idx = list(range(len(vecs)))
            if model == "zeros":
                vecs = [[0.0] * dim for _ in vecs]
            elif model == "short":
                vecs, idx = vecs[:-1], idx[:-1]
            elif model == "badlen" and vecs:
                vecs[-1] = vecs[-1][:-1]
            elif model == "badindex" and len(idx) > 1:
                idx[-1] = 0
            srv._record(texts)
            tokens = sum(len(t.split()) for t in texts)
            if ollama:
                body = {"model": model, "embeddings": vecs, "prompt_eval_count": tokens}
            else:
                body = {
                    "object": "list", "model": model,
                    "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in zip(idx, vecs, strict=True)],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            data = json.dumps(body)
            if model == "nan" and vecs:
                data = data.replace(str(vecs[0][0]), "NaN", 1)
            self._send(200, data.encode(), drip=model == "drip")

        def _completion(self, model: str, prompt: str, path: str) -> None:
            item = _item_of(prompt)
            if model == "refuse":
                text = "I'm sorry, but I cannot help with that request."
            elif model == "apologize":
                text = f"I apologize, but I cannot provide information about {item} at this time."
            elif model == "empty":
                text = ""
            else:
                text = (f"{item} is described here by a fake model: it takes part in signalling "
                        f"pathways and cellular functions typical of {item}.")
            srv._record([item])
            pt, ct = len(prompt.split()), len(text.split())
            if path == "/api/generate":
                body: dict[str, Any] = {"model": model, "created_at": "2026-01-01T00:00:00Z", "response": text,
                                        "done": True, "prompt_eval_count": pt, "eval_count": ct}
            elif path == "/api/chat":
                body = {"model": model, "created_at": "2026-01-01T00:00:00Z",
                        "message": {"role": "assistant", "content": text}, "done": True,
                        "prompt_eval_count": pt, "eval_count": ct}
            else:
                body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}
            self._send(200, body, drip=model == "drip")

    return Handler


def main(argv: list[str] | None = None) -> None:
    """``python -m scelmo.testing.server [--latency S] [--dim D]``: serve until killed, print the port."""

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--dim", type=int, default=16)
    args = ap.parse_args(argv)
    srv = FakeLLMServer(latency=args.latency, dim=args.dim).start()
    print(srv.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
