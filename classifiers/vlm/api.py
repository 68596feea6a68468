"""OpenAI-compatible HTTP judges: ``openai`` (a vision chat model answering the three
prompts) and ``openai-moderation`` (omni-moderation's image categories). Black-box only.

Standard library HTTP (urllib) with a timeout per request, bounded retries with exponential
backoff on 429 / 5xx / timeouts (honouring ``Retry-After`` up to ``max_backoff``), and at most
``concurrency`` requests in flight. The key is read from ``OPENAI_API_KEY`` when the first
request is made, is sent only in the Authorization header, and never reaches a cache, report
or error message. A request that still fails is reported on its image (the raw field names the
reason) and has no verdict: the cells exclude and count it, never score it as safe or unsafe.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...classifier import Coverage, Prediction
from ...errors import ClassifierLoadError
from ...options import DEFAULT_SEED
from .base import Job, JudgeOptions, VLMJudge
from .responses import Answer, ResponseCache, image_key, response_key

if TYPE_CHECKING:
    from PIL.Image import Image

KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
INSECURE_OPTION = "allow_insecure_base_url"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would resend the Authorization header to wherever a redirect points (another
    host, or plain http): a redirect is a failed request instead."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused (the "
                                     "API key is not sent on); set base_url to the final URL",
                                     headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


def check_base_url(base_url: Any, allow_insecure: bool, classifier: str) -> str:
    """``base_url`` if the key may travel to it: https anywhere, plain http only to this
    machine (localhost, a loopback address) unless ``allow_insecure_base_url`` is set."""
    parts = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise ClassifierLoadError(f"{classifier}: base_url must be an https:// URL with a host, "
                                  f"got {base_url!r}")
    if parts.scheme == "https" or allow_insecure or _is_loopback(parts.hostname):
        return base_url
    raise ClassifierLoadError(
        f"{classifier}: base_url {base_url!r} is plain http to {parts.hostname}, so "
        f"{KEY_ENV} would travel in clear text; use https, or set {INSECURE_OPTION} = true in "
        f"[tool.unsafebench.classifiers.{classifier}] if that network is trusted")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


class RequestFailed(Exception):
    """A request that failed for good (after retries, or not retryable)."""


@dataclass
class HttpClient:
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON, return the decoded JSON object; RequestFailed with the reason."""
        key = os.environ.get(KEY_ENV)
        if not key:
            raise ClassifierLoadError(f"set {KEY_ENV} in the environment to use the OpenAI API "
                                      "(keys are read from the environment only)")
        body = json.dumps(payload).encode()
        url = self.base_url.rstrip("/") + path
        reason = ""
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            wait = self.backoff * 2 ** attempt
            try:
                with _OPENER.open(req, timeout=self.timeout) as resp:
                    data = resp.read()
                try:
                    parsed = json.loads(data)
                except ValueError:
                    raise RequestFailed(f"malformed answer: not JSON ({data[:80]!r})") from None
                if not isinstance(parsed, dict):
                    raise RequestFailed("malformed answer: not a JSON object")
                return parsed
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code} {exc.reason}"
                if exc.code != 429 and exc.code < 500:
                    raise RequestFailed(reason) from None
                after = exc.headers.get("Retry-After") if exc.headers else None
                if after and after.replace(".", "", 1).isdigit():
                    wait = float(after)
            except TimeoutError:
                reason = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    raise RequestFailed(f"cannot reach {self.base_url}: {exc.reason}") from None
                reason = f"timed out after {self.timeout:g} s"
            if attempt < self.max_retries:
                self.sleep(min(wait, self.max_backoff))
        raise RequestFailed(f"{reason} (gave up after {self.max_retries + 1} attempts)")


def _data_url(image: Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _client(base_url: str, timeout: float, max_retries: int, backoff: float,
            allow_insecure: bool = False, classifier: str = "openai") -> HttpClient:
    if max_retries < 0 or timeout <= 0 or backoff < 0:
        raise ClassifierLoadError("openai: timeout must be > 0, max_retries and backoff >= 0")
    base_url = check_base_url(base_url, allow_insecure, classifier)
    return HttpClient(base_url=base_url, timeout=float(timeout), max_retries=int(max_retries),
                      backoff=float(backoff))


class OpenAIJudge(VLMJudge):
    """A vision chat model (``model``, default gpt-4o) answering the paper's three prompts with
    temperature 0 (greedy, so no seed in the response key)."""

    name = "openai"
    # The official query_vlms.py's name for GPT-4V, and the model it called (vlms.py).
    default_archive = paper_archive = "gpt-4v"
    paper_models = ("gpt-4-vision-preview",)

    def __init__(self, model: str, client: HttpClient, concurrency: int, max_tokens: int,
                 opts: JudgeOptions) -> None:
        if concurrency < 1 or max_tokens < 1:
            raise ClassifierLoadError("openai: concurrency and max_tokens must be >= 1")
        self.model_id = model
        self.revision = ""
        self.client = client
        self.concurrency = concurrency
        self.decoding = {"temperature": 0, "max_tokens": max_tokens}
        self.setup(opts)

    def model_digest(self) -> str:
        return "api"  # a hosted model has no weights to hash; its name is in the key

    def model_mismatch(self) -> str | None:
        return (None if self.model_id in self.paper_models else
                f"model {self.model_id} is not the paper's GPT-4V (gpt-4-vision-preview, now "
                "retired: import the paper's archived gpt-4v responses instead)")

    def _ask(self, job: Job) -> Answer:
        content = [{"type": "text", "text": job.prompt},
                   {"type": "image_url", "image_url": {"url": _data_url(job.image)}}]
        payload = {"model": self.model_id, **self.decoding,
                   "messages": [{"role": "user", "content": content}]}
        try:
            data = self.client.post("/chat/completions", payload)
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except RequestFailed as exc:
            return Answer(None, error=str(exc))
        except (KeyError, IndexError, TypeError) as exc:
            return Answer(None, error=f"malformed answer: no choices[0].message.content ({exc})")
        return Answer(text)

    def generate(self, jobs: Sequence[Job]) -> list[Answer]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._ask, jobs))


# omni-moderation's categories that apply to images, and the UnsafeBench categories they mean.
MODERATION_IMAGE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "sexual": ("Sexual",),
    "violence": ("Violence",),
    "violence/graphic": ("Violence", "Shocking"),
    "self-harm": ("Self-harm",),
    "self-harm/intent": ("Self-harm",),
    "self-harm/instructions": ("Self-harm",),
}


class OpenAIModeration:
    """omni-moderation on the image alone. score: the largest image category score;
    decision: the API's ``flagged``. A failed request is reported on its image (raw) and
    marked failed, so the effectiveness cells exclude and count it."""

    name = "openai-moderation"
    supports_gradients = False
    needs_records = True
    coverage = Coverage.of(sorted({c for cs in MODERATION_IMAGE_CATEGORIES.values() for c in cs}))

    def __init__(self, model: str, client: HttpClient, concurrency: int,
                 cache_dir: Path | None) -> None:
        if concurrency < 1:
            raise ClassifierLoadError("openai-moderation: concurrency must be >= 1")
        self.model_id = model
        self.client = client
        self.concurrency = concurrency
        self.cache_dir = cache_dir
        self.fingerprint = f"openai-moderation-{hashlib.sha256(model.encode()).hexdigest()[:16]}"
        self.description = f"OpenAI moderation API ({model}), image categories only"

    def _ask(self, image: Image) -> tuple[str | None, str | None]:
        payload = {"model": self.model_id,
                   "input": [{"type": "image_url", "image_url": {"url": _data_url(image)}}]}
        try:
            data = self.client.post("/moderations", payload)
            result = data["results"][0]
            if not isinstance(result["flagged"], bool) \
                    or not isinstance(result["category_scores"], dict):
                raise TypeError("flagged / category_scores have the wrong type")
            return json.dumps(result), None
        except RequestFailed as exc:
            return None, str(exc)
        except (KeyError, IndexError, TypeError) as exc:
            return None, f"malformed answer: no results[0] with flagged and category_scores ({exc})"

    def predict(self, images: Sequence[Image],
                records: Sequence[Any] | None = None) -> list[Prediction]:
        keys = [response_key(self.model_id, "", "moderation", {}, image_key(im)) for im in images]
        cache = (ResponseCache(Path(self.cache_dir) / "vlm_responses.sqlite") if self.cache_dir
                 else None)
        try:
            known = {k: a.text for k, a in cache.get(keys).items()} if cache else {}
            todo = [(k, im) for k, im in zip(keys, images) if k not in known]
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                fresh = list(pool.map(lambda item: self._ask(item[1]), todo))
            if cache:
                cache.put(self.model_id,
                          [(k, Answer(t)) for (k, _), (t, _) in zip(todo, fresh) if t])
        finally:
            if cache:
                cache.close()
        errors = {k: e for (k, _), (_, e) in zip(todo, fresh) if e}
        known.update((k, t) for (k, _), (t, _) in zip(todo, fresh) if t)
        recs = list(records) if records is not None else [None] * len(images)
        return [self._prediction(known.get(k), errors.get(k), r) for k, r in zip(keys, recs)]

    @staticmethod
    def _prediction(text: str | None, error: str | None, record: Any) -> Prediction:
        if text is None:
            return Prediction(score=0.5, decision="unsure",
                              label_scores={"failed": 1.0, "unsure": 1.0},
                              raw=json.dumps({"error": error}))
        result = json.loads(text)
        scores = {k: float(v) for k, v in result["category_scores"].items()
                  if k in MODERATION_IMAGE_CATEGORIES and isinstance(v, (int, float))}
        score = max(scores.values(), default=0.0)
        return Prediction(score=min(1.0, max(0.0, score)),
                          decision="unsafe" if result["flagged"] else "safe",
                          label_scores={**scores, "failed": 0.0, "unsure": 0.0}, raw=text)


def load_openai(model: str = "gpt-4o", base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0,
                max_retries: int = 3, backoff: float = 1.0, concurrency: int = 4,
                max_tokens: int = 512, unsure: str = "random", unsure_seed: int = DEFAULT_SEED,
                definitions: str | None = None, import_responses: str | None = None,
                archive_model: str | None = None, converter: str | None = None,
                converter_labels: Sequence[str] | None = None, converter_base: str | None = None,
                device: str = "cpu", cache_dir: Path | None = None,
                allow_insecure_base_url: bool = False) -> OpenAIJudge:
    """The ``openai`` judge (see the module doc)."""
    opts = JudgeOptions(unsure=unsure, seed=unsure_seed, definitions=definitions,
                        import_responses=import_responses, archive_model=archive_model,
                        converter=converter, converter_labels=converter_labels,
                        converter_base=converter_base, cache_dir=cache_dir, device=device)
    client = _client(base_url, timeout, max_retries, backoff, allow_insecure_base_url, "openai")
    return OpenAIJudge(model, client, int(concurrency),
                       int(max_tokens), opts)


def load_moderation(model: str = "omni-moderation-latest", base_url: str = DEFAULT_BASE_URL,
                    timeout: float = 60.0, max_retries: int = 3, backoff: float = 1.0,
                    concurrency: int = 4, cache_dir: Path | None = None,
                    allow_insecure_base_url: bool = False) -> OpenAIModeration:
    """The ``openai-moderation`` classifier (see the module doc)."""
    return OpenAIModeration(model, _client(base_url, timeout, max_retries, backoff,
                                           allow_insecure_base_url, "openai-moderation"),
                            int(concurrency), cache_dir)
