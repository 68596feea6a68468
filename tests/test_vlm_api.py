"""The OpenAI judges against a fake HTTP server on 127.0.0.1 started by each test: success,
rate limiting, server errors, malformed answers, timeouts, the concurrency limit, and keys
that never reach a cache or a prediction."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from pytest_unsafebench.classifiers.vlm.api import load_moderation, load_openai
from pytest_unsafebench.dataset.records import Record
from pytest_unsafebench.errors import ClassifierLoadError

KEY = "sk-test-secret-123"
Reply = tuple[int, object, float]   # status, JSON body (or raw str), delay in seconds


class FakeAPI:
    """Answers each request with ``reply(path, payload, n)``; n counts requests from 0."""

    def __init__(self, reply: Callable[[str, dict, int], Reply]) -> None:
        self.reply = reply
        self.requests: list[tuple[str, dict, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api.lock:
                    n = len(api.requests)
                    api.requests.append((self.path, payload, self.headers["Authorization"]))
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                status, body, delay = api.reply(self.path, payload, n)
                time.sleep(delay)
                with api.lock:
                    api.in_flight -= 1
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(monkeypatch) -> Iterator[Callable[..., FakeAPI]]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    servers: list[FakeAPI] = []

    def start(reply: Callable[[str, dict, int], Reply]) -> FakeAPI:
        servers.append(FakeAPI(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def chat(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def images(n: int = 2) -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), (40 * i, 20, 200)) for i in range(n)]


def records(labels: list[str]) -> list[Record]:
    return [Record(id=f"r{i}", safety_label=lab, category="Hate", source="Lexica", split="test",
                   content_hash=f"h{i}", locator=f"m.csv:row {i} (img{i}.png)")
            for i, lab in enumerate(labels)]


def judge(api: FakeAPI, tmp_path, **kw):
    opts = {"base_url": api.url, "timeout": 2.0, "max_retries": 2, "backoff": 0.0,
            "cache_dir": tmp_path, **kw}
    return load_openai(**opts)


def test_success_three_prompts_vote_and_cache(serve, tmp_path) -> None:
    answers = {0: "The image is unsafe.", 1: "unsafe", 2: "It is safe."}

    def reply(path, payload, n):
        prompt = payload["messages"][0]["content"][0]["text"]
        which = 0 if prompt.startswith("Classify") else 2 if prompt.startswith("Forget") else 1
        return 200, chat(answers[which]), 0.0

    api = serve(reply)
    clf = judge(api, tmp_path)
    preds = clf.predict(images(), records=records(["Unsafe", "Safe"]))
    assert [p.decision for p in preds] == ["unsafe", "unsafe"]
    assert preds[0].score == pytest.approx(2 / 3)   # no token probabilities: share of votes
    raw = json.loads(preds[0].raw)
    assert raw["verdicts"] == ["unsafe", "unsafe", "safe"]
    assert len(api.requests) == 6
    path, payload, auth = api.requests[0]
    assert path == "/v1/chat/completions" and auth == f"Bearer {KEY}"
    assert payload["temperature"] == 0 and payload["max_tokens"] == 512
    content = payload["messages"][0]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert any("Hate:" in p["messages"][0]["content"][0]["text"] for _, p, _ in api.requests)
    # a second run is answered from the response cache: no request at all
    again = judge(api, tmp_path).predict(images(), records=records(["Unsafe", "Safe"]))
    assert again == preds and len(api.requests) == 6
    stored = (tmp_path / "vlm_responses.sqlite").read_bytes()
    assert KEY.encode() not in stored
    rows = sqlite3.connect(tmp_path / "vlm_responses.sqlite").execute(
        "SELECT COUNT(*) FROM responses").fetchone()
    assert rows == (6,)


def test_rate_limited_then_success(serve, tmp_path) -> None:
    api = serve(lambda path, payload, n: (429, {"error": "slow down"}, 0.0) if n < 2
                else (200, chat("unsafe"), 0.0))
    clf = judge(api, tmp_path, concurrency=1)
    (pred,) = clf.predict(images(1), records=records(["Safe"]))
    assert pred.decision == "unsafe" and pred.label_scores["failed"] == 0.0
    assert len(api.requests) == 5   # two 429s retried, then three answers


@pytest.mark.parametrize("label", ["Unsafe", "Safe"])
def test_server_errors_leave_the_image_without_a_verdict(serve, tmp_path, label) -> None:
    api = serve(lambda path, payload, n: (503, {"error": "down"}, 0.0))
    clf = judge(api, tmp_path, unsure="safe", max_retries=1)
    (pred,) = clf.predict(images(1), records=records([label]))
    # no verdict whatever the policy: the cells exclude and count it, never score it
    assert pred.decision == "unsure"
    assert pred.label_scores["failed"] == 1.0
    assert "HTTP 503" in pred.raw and "gave up after 2 attempts" in pred.raw
    assert len(api.requests) == 3 * 2
    assert KEY not in pred.raw
    # failures are not cached: the next run asks again
    judge(api, tmp_path, unsure="safe", max_retries=1).predict(images(1), records=records([label]))
    assert len(api.requests) == 12


@pytest.mark.parametrize("body",
                         ["not json at all", {"choices": []}, {"choices": [{"message": {}}]}])
def test_malformed_answers_are_reported(serve, tmp_path, body) -> None:
    api = serve(lambda path, payload, n: (200, body, 0.0))
    (pred,) = judge(api, tmp_path).predict(images(1), records=records(["Unsafe"]))
    assert pred.label_scores["failed"] == 1.0 and "malformed answer" in pred.raw
    assert pred.decision == "unsure"   # no verdict


def test_timeouts_are_retried_then_reported(serve, tmp_path) -> None:
    api = serve(lambda path, payload, n: (200, chat("safe"), 0.6))
    clf = judge(api, tmp_path, timeout=0.1, max_retries=1, concurrency=3)
    (pred,) = clf.predict(images(1), records=records(["Safe"]))
    assert "timed out after 0.1 s" in pred.raw and pred.decision == "unsure"
    assert len(api.requests) == 6


def test_concurrency_limit(serve, tmp_path) -> None:
    api = serve(lambda path, payload, n: (200, chat("safe"), 0.05))
    judge(api, tmp_path, concurrency=2).predict(images(3), records=records(["Safe"] * 3))
    assert len(api.requests) == 9 and api.max_in_flight <= 2


def test_missing_key_is_an_error_naming_the_variable(serve, tmp_path, monkeypatch) -> None:
    api = serve(lambda path, payload, n: (200, chat("safe"), 0.0))
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ClassifierLoadError, match="OPENAI_API_KEY"):
        judge(api, tmp_path).predict(images(1), records=records(["Safe"]))
    assert api.requests == []


def test_moderation_scores_image_categories(serve, tmp_path) -> None:
    result = {"flagged": True, "categories": {}, "category_scores": {
        "sexual": 0.2, "violence/graphic": 0.9, "harassment": 0.99, "self-harm": 0.1}}

    def reply(path, payload, n):
        if n == 1:
            return 500, {"error": "boom"}, 0.0
        return 200, {"id": "x", "results": [result]}, 0.0

    api = serve(reply)
    clf = load_moderation(base_url=api.url, max_retries=0, backoff=0.0, concurrency=1,
                          cache_dir=tmp_path)
    ok, failed = clf.predict(images(2), records=records(["Unsafe", "Unsafe"]))
    assert ok.decision == "unsafe" and ok.score == pytest.approx(0.9)   # harassment: text only
    assert api.requests[0][0] == "/v1/moderations"
    assert api.requests[0][1]["input"][0]["type"] == "image_url"
    assert failed.decision == "unsure" and failed.label_scores["failed"] == 1.0
    assert "HTTP 500" in failed.raw
    assert sorted(clf.coverage.official) == ["Self-harm", "Sexual", "Shocking", "Violence"]


# --------------------------------------------------------------------------- where the key goes
LOADERS = [load_openai, load_moderation]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("url", ["http://api.example.com/v1", "http://10.0.0.5:8000/v1",
                                 "HTTP://example.org", "http://localhost.example.com/v1"])
def test_plain_http_to_another_host_is_refused(loader, url: str, tmp_path) -> None:
    with pytest.raises(ClassifierLoadError, match="allow_insecure_base_url = true") as info:
        loader(base_url=url, cache_dir=tmp_path)
    assert "\n" not in str(info.value) and "clear text" in str(info.value)
    assert loader(base_url=url, cache_dir=tmp_path, allow_insecure_base_url=True)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("url", ["https://api.example.com/v1", "http://localhost:8000/v1",
                                 "http://127.0.0.1/v1", "http://127.0.0.2:9/v1",
                                 "http://[::1]:8080/v1"])
def test_https_and_this_machine_are_allowed(loader, url: str, tmp_path) -> None:
    assert loader(base_url=url, cache_dir=tmp_path)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/v1",
                                 "api.openai.com/v1", "https:///v1", 5])
def test_base_url_must_be_a_web_url(url, tmp_path) -> None:
    with pytest.raises(ClassifierLoadError, match="base_url must be an https:// URL"):
        load_openai(base_url=url, cache_dir=tmp_path, allow_insecure_base_url=True)


def test_a_redirect_never_carries_the_key(serve, tmp_path) -> None:
    """urllib resends Authorization wherever a 30x points; the client refuses to follow."""
    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["Authorization"])
            self.send_response(200)
            self.end_headers()
            self.wfile.write(json.dumps(chat("safe")).encode())

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{other.server_address[1]}/steal"

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    first = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=first.serve_forever, daemon=True).start()
    try:
        clf = load_openai(base_url=f"http://127.0.0.1:{first.server_address[1]}/v1",
                          max_retries=0, backoff=0.0, cache_dir=tmp_path)
        pred, = clf.predict(images(1), records=records(["Safe"]))
    finally:
        for server in (first, other):
            server.shutdown()
            server.server_close()
    assert seen == []
    assert pred.label_scores["failed"] == 1.0 and "redirect" in pred.raw
