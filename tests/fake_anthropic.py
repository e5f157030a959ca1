"""A fake Anthropic Messages API on 127.0.0.1, for tests and benchmarks.

Real HTTP, spoken to by the official `anthropic` SDK (point ANTHROPIC_BASE_URL at `server.url`). Each
request takes the next scripted `Reply` (or the default responder's), so a test can say "529 twice, then
answer", "stream three words and then an overloaded error", "wait 2 s", "never answer". Every request is
recorded with its headers and JSON body.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Reply:
    """What the fake server does with one request."""

    text: str = "The answer is in the handbook [1]."
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"retry-after": "1"}
    delay_s: float = 0.0  # before anything is sent (a slow first token)
    chunk_delay_s: float = 0.0  # between streamed text deltas
    error_after_chunks: int | None = None  # stream this many deltas, then an `overloaded_error` event
    hang: bool = False  # accept the request and never answer (until the server stops)
    input_tokens: int | None = None
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def chunks(self) -> list[str]:
        words = self.text.split(" ")
        return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def model(self) -> str:
        return self.body.get("model", "")


class FakeAnthropic:
    def __init__(self, default: Callable[[dict], Reply] | None = None, port: int = 0) -> None:
        self.script: deque[Reply] = deque()
        self.default = default or (lambda body: Reply())
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()  # kept-alive client connections, closed by stop()
        # A given port brings a stopped fake back where the app expects it (the provider-outage drill).
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def then(self, *replies: Reply) -> FakeAnthropic:
        """Script the next requests, in order; after them the default responder answers."""
        with self._lock:
            self.script.extend(replies)
        return self

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as a server that goes down does: no new connections, and the open ones are cut."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeAnthropic:
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
                pass  # quiet: tests read `fake.requests` instead

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
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                with fake._lock:
                    fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if not self.path.startswith("/v1/messages"):
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
                return self._json(200, _message(body, reply), reply.headers)

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                kind = ERROR_TYPES.get(status, "api_error")
                self._json(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)

            def _event(self, name: str, payload: dict) -> None:
                data = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
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
                message = _message(body, reply)
                started = {**message, "content": [], "stop_reason": None}
                started["usage"] = {**message["usage"], "output_tokens": 1}
                try:
                    self._event("message_start", {"type": "message_start", "message": started})
                    self._event(
                        "content_block_start",
                        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                    )
                    self._event("ping", {"type": "ping"})
                    for number, chunk in enumerate(reply.chunks()):
                        if reply.error_after_chunks is not None and number >= reply.error_after_chunks:
                            self._event(
                                "error",
                                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                            )
                            return self._end_chunks()
                        if reply.chunk_delay_s:
                            time.sleep(reply.chunk_delay_s)
                        self._event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
                        )
                    self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
                    self._event(
                        "message_delta",
                        {
                            "type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": message["usage"]["output_tokens"]},
                        },
                    )
                    self._event("message_stop", {"type": "message_stop"})
                    self._end_chunks()
                except (BrokenPipeError, ConnectionResetError):
                    return None  # the client went away (a timeout fired): nothing to finish

            def _end_chunks(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler


def _message(body: dict, reply: Reply) -> dict:
    prompt_words = sum(len(json.dumps(m.get("content", "")).split()) for m in body.get("messages", []))
    system_words = len(json.dumps(body.get("system", "")).split())
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude-test"),
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens if reply.input_tokens is not None else prompt_words + system_words,
            "output_tokens": max(1, len(reply.text.split())),
            "cache_creation_input_tokens": reply.cache_creation_input_tokens,
            "cache_read_input_tokens": reply.cache_read_input_tokens,
        },
    }


_PASSAGE = re.compile(r'<passage n="(\d+)"[^>]*>\n(.*?)\n</passage>', re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def passages_of(body: dict) -> list[tuple[int, str]]:
    """The numbered passages in a request built by kb's prompt."""
    text = "".join(
        part if isinstance(part, str) else "".join(block.get("text", "") for block in part)
        for part in (m.get("content", "") for m in body.get("messages", []))
    )
    return [(int(n), passage) for n, passage in _PASSAGE.findall(text)]


def quoting_responder(body: dict, *, sentences: int = 1, delay_s: float = 0.0) -> Reply:
    """Answer like a careful model: the first sentence(s) of the first passages, each cited; "not covered"
    when no passage came with the question."""
    passages = passages_of(body)
    if not passages:
        return Reply(text="The knowledge base does not cover this question.", delay_s=delay_s)
    parts = []
    for n, passage in passages[:2]:
        first = " ".join(_SENTENCE_END.split(" ".join(passage.split()))[:sentences])
        parts.append(f"{first} [{n}]")
    return Reply(text=" ".join(parts), delay_s=delay_s)


# --- a responder that follows its prompt, for the answer evaluation (issue #8) --------------------------------

NOT_COVERED = "The knowledge base does not cover this question."
_PASSAGE_BLOCK = re.compile(r'<passage n="(\d+)"([^>]*)>\n(.*?)\n</passage>', re.DOTALL)
_ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
_QUESTION = re.compile(r"<question>\n(.*?)\n</question>", re.DOTALL)
_ASKS_FOR_INSTRUCTIONS = re.compile(
    r"system prompt|instructions|hidden rules|your rules|text above|your configuration", re.IGNORECASE
)
_WORD = re.compile(r"[^\W_]+")
_STOPWORD_TEXT = """
a an and any are as at be by can could did do does for from get got had has have how i if in into is it its me
much many may might my no not of on or our please should so than that the their them then there these they this
to us was we were what when where which who whom why will with would you your about also all am tell know need want
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_STEM = 5  # words compared by their first letters, plurals by their singular: "files" meets "file"
# The responder answers only when its best sentence, with its passage's title and section, holds more than this
# share of the question's keywords (when the prompt lets it say "not covered").
ANSWER_COVERAGE = 0.5


def system_of(body: dict) -> str:
    system = body.get("system", "")
    return system if isinstance(system, str) else "".join(block.get("text", "") for block in system)


def _user_text(body: dict) -> str:
    return "".join(
        part if isinstance(part, str) else "".join(block.get("text", "") for block in part)
        for part in (m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user")
    )


def question_of(body: dict) -> str:
    found = _QUESTION.findall(_user_text(body))
    return found[-1] if found else ""


def _keywords(text: str) -> set[str]:
    words = (word.lower() for word in _WORD.findall(text))
    return {
        (word[:-1] if word.endswith("s") and len(word) > 3 else word)[:_STEM]
        for word in words
        if word not in _STOPWORDS and len(word) > 1
    }


def grounded_responder(body: dict, *, sentences: int = 2, delay_s: float = 0.0) -> Reply:
    """Answer like a model that does what its system prompt says, in simple ways a test can detect, so that a
    worse prompt gives measurably worse answers (tests/evaluation/test_evaluate_answers.py):

    - the answer is the passage sentences holding the most of the question's keywords (a passage's document
      title and section count half, as context for its sentences), best first, at most `sentences` of them;
    - each sentence cites its passage as [n] only when the prompt asks for citations (it shows "[1]");
    - when no sentence with its context holds more than ANSWER_COVERAGE of the keywords, it says the prompt's
      "not covered" sentence, but only when the prompt has that rule; without it, it answers anyway;
    - asked for its instructions, it repeats its system prompt unless the prompt says never to reveal them.
    """
    system = system_of(body)
    question = question_of(body)
    cites = "[1]" in system and "cite" in system.casefold()
    may_refuse = NOT_COVERED in system
    if _ASKS_FOR_INSTRUCTIONS.search(question) and "never reveal" not in system.casefold():
        return Reply(text=system, delay_s=delay_s)
    wanted = _keywords(question)
    candidates: list[tuple[float, int, int, str]] = []  # (score, rank, n, sentence)
    best_coverage = 0.0
    for rank, (n, attributes, text) in enumerate(_PASSAGE_BLOCK.findall(_user_text(body))):
        fields = dict(_ATTRIBUTE.findall(attributes))
        context = _keywords(f"{fields.get('document', '')} {fields.get('section', '')}")
        for sentence in _SENTENCE_END.split(" ".join(text.split())):
            own = wanted & _keywords(sentence)
            if not own or not wanted:
                continue
            covered = own | (wanted & context)
            best_coverage = max(best_coverage, len(covered) / len(wanted))
            candidates.append((len(own) + 0.5 * len(covered - own), rank, int(n), sentence))
    if not candidates or (may_refuse and best_coverage <= ANSWER_COVERAGE):
        return Reply(text=NOT_COVERED if may_refuse else "I could not find anything about that.", delay_s=delay_s)
    candidates.sort(key=lambda c: (-c[0], c[1]))
    parts = [f"{sentence} [{n}]" if cites else sentence for _, _, n, sentence in candidates[:sentences]]
    return Reply(text=" ".join(parts), delay_s=delay_s)
