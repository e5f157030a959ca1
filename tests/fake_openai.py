"""A fake OpenAI-compatible chat-completions API on 127.0.0.1 (OpenAI, vLLM, Ollama all speak it), for tests
and benchmarks.

Real HTTP, spoken to by the official `openai` SDK (point OPENAI_BASE_URL, or a KB_ENDPOINTS base URL, at
`server.url`). Each request takes the next scripted `Reply` (or the default responder's): "429 with
retry-after, then answer", "stream three words and then an error object", "stream two words and cut the
connection", "wait 2 s". Every request is recorded with its headers and JSON body.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests import fake_anthropic

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "model_not_found",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
}


@dataclass
class Reply:
    """What the fake server does with one request."""

    text: str = "The answer is in the handbook [1]."
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"retry-after": "1"}
    delay_s: float = 0.0  # before anything is sent (a slow first token)
    chunk_delay_s: float = 0.0
    error_after_chunks: int | None = None  # stream this many deltas, then an error object (as vLLM sends)
    cut_after_chunks: int | None = None  # stream this many deltas, then drop the connection mid-body
    finish: str | None = "stop"  # None: end the stream cleanly but with no finish reason (a proxy cut it)
    hang: bool = False
    prompt_tokens: int | None = None
    cached_tokens: int = 0

    def chunks(self) -> list[str]:
        words = self.text.split(" ")
        return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict

    @property
    def model(self) -> str:
        return self.body.get("model", "")

    @property
    def text(self) -> str:
        """Everything the request carried to the server: every message's content."""
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


def quoting_responder(body: dict) -> Reply:
    """The fake Anthropic's careful model: the first sentence of the first passages, each cited."""
    reply = fake_anthropic.quoting_responder(body)
    return Reply(text=reply.text)


class FakeOpenAI:
    def __init__(self, default: Callable[[dict], Reply] | None = None, port: int = 0) -> None:
        self.script: deque[Reply] = deque()
        self.default = default or (lambda body: Reply())
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/v1"

    def then(self, *replies: Reply) -> FakeOpenAI:
        with self._lock:
            self.script.extend(replies)
        return self

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next(self, body: dict) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        return self.default(body)

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def setup(self):
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self):
                with fake._lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                with fake._lock:
                    fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if not self.path.startswith("/v1/chat/completions"):
                    return self._error(404, "not found")
                reply = fake._next(body)
                if reply.hang:
                    fake._stopping.wait()
                    return None
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    return self._error(reply.status, f"scripted {reply.status}", reply.headers)
                if body.get("stream"):
                    return self._stream(body, reply)
                return self._json(200, _completion(body, reply), reply.headers)

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                kind = ERROR_TYPES.get(status, "server_error")
                self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": kind}}, headers)

            def _data(self, payload: dict | str) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = f"data: {text}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, body: dict, reply: Reply) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("transfer-encoding", "chunked")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                base = {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", "gpt-test"),
                }
                try:
                    self._data({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                    for number, chunk in enumerate(reply.chunks()):
                        if reply.error_after_chunks is not None and number >= reply.error_after_chunks:
                            self._data({"error": {"message": "The server is overloaded", "type": "server_error"}})
                            return self._end_chunks()
                        if reply.cut_after_chunks is not None and number >= reply.cut_after_chunks:
                            self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk: a cut body
                            return None
                        if reply.chunk_delay_s:
                            time.sleep(reply.chunk_delay_s)
                        delta = {"index": 0, "delta": {"content": chunk}, "finish_reason": None}
                        self._data({**base, "choices": [delta]})
                    if reply.finish is not None:
                        self._data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish}]})
                    if (body.get("stream_options") or {}).get("include_usage"):
                        self._data({**base, "choices": [], "usage": _usage(body, reply)})
                    if reply.finish is not None:
                        self._data("[DONE]")
                    self._end_chunks()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    return None

            def _end_chunks(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler


def _usage(body: dict, reply: Reply) -> dict:
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else words
    completion = max(1, len(reply.text.split()))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
    }


def _completion(body: dict, reply: Reply) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-test"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}],
        "usage": _usage(body, reply),
    }
