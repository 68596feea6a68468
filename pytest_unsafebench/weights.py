"""Finding weight files, in a documented order, and hashing them for fingerprints.

Order: (1) an explicit path from config or the command line; (2) the project's weights folder
``<cache_dir>/weights/<classifier>/<file>``; (3) for hub-hosted files, the local Hugging Face
cache; (4) a hub download, unless the hub is off (:func:`hub_offline_reason`: ``HF_HUB_OFFLINE``
set, or the hub did not answer one quick connection attempt, made once per process, so an
offline machine does not spend a minute in huggingface_hub's retries). If nothing is found, one
:class:`WeightsNotFound` names the file, where it comes from, and how to provide it;
:func:`require_all` gathers every missing file of a classifier into one such message.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ClassifierLoadError
from .progress import step


class WeightsNotFound(ClassifierLoadError):
    """A weight file that is not available locally and cannot be downloaded."""


@dataclass(frozen=True)
class WeightFile:
    """Where one weight file comes from."""

    classifier: str
    filename: str
    origin: str                  # human-readable: a URL or "repo: path"
    option: str                  # the config key that takes an explicit path
    repo_id: str | None = None   # set for files hosted on the Hugging Face hub
    revision: str | None = None


def resolve(spec: WeightFile, explicit: str | os.PathLike[str] | None,
            cache_dir: Path | None) -> Path:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise WeightsNotFound(
                f"{spec.classifier}: {spec.option} = {str(path)!r} does not exist "
                f"(expected {spec.filename} from {spec.origin})")
        return path
    if cache_dir is not None:
        local = Path(cache_dir) / "weights" / spec.classifier / spec.filename
        if local.exists():
            return local
    if spec.repo_id:
        found = _from_hub(spec, spec.repo_id)
        if found is not None:
            return found
    where = (f"{Path(cache_dir) / 'weights' / spec.classifier / spec.filename}" if cache_dir
             else None)
    hint = (f"download it from {spec.origin} and set {spec.option} in "
            f"[tool.unsafebench.classifiers.{spec.classifier}]")
    if where:
        hint += f", or place it at {where}"
    if spec.repo_id:
        why = hub_offline_reason() or "the download failed"
        hint = (f"it is on the Hugging Face hub as {spec.repo_id}, not in the local cache "
                f"({why}); run once with network access, or {hint}")
    raise WeightsNotFound(f"{spec.classifier}: weight file {spec.filename!r} not found: {hint}")


def _from_hub(spec: WeightFile, repo_id: str) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo_id, spec.filename, revision=spec.revision)
    if isinstance(cached, str):
        return Path(cached)
    if hub_offline_reason():
        return None
    try:
        with step("download", f"downloading {repo_id}/{spec.filename}"):
            return Path(hf_hub_download(repo_id, spec.filename, revision=spec.revision))
    except Exception:  # any hub failure means "not available"; resolve() explains
        return None


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_PROBE: dict[str, str | None] = {}  # hub endpoint -> why it is unreachable (None: reachable)
_PROBE_LOCK = threading.Lock()
PROBE_TIMEOUT_S = 3.0


def hub_offline_reason() -> str | None:
    """Why this process makes no Hugging Face hub requests, or None when it may.

    ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is honoured as set; otherwise one TCP
    connection to the hub endpoint (``HF_ENDPOINT``) is tried once per process and endpoint:
    huggingface_hub would otherwise retry each file for many seconds on a machine without network.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if env_flag(name):
            return f"{name} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    with _PROBE_LOCK:
        if endpoint not in _PROBE:
            _PROBE[endpoint] = _probe(endpoint)
        return _PROBE[endpoint]


def _probe(endpoint: str) -> str | None:
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        return f"HF_ENDPOINT = {endpoint!r} is not a URL"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"the Hugging Face hub ({endpoint}) cannot be reached: {exc}"


def require_all(classifier: str, *steps: Callable[[], Any]) -> list[Any]:
    """Run each resolving step; if any lacks its files, raise ONE :class:`WeightsNotFound`
    naming all of them (a user fixes everything in one go, not one file per run)."""
    results: list[Any] = []
    missing: list[str] = []
    for resolve_step in steps:
        try:
            results.append(resolve_step())
        except WeightsNotFound as exc:
            missing.append(str(exc).removeprefix(f"{classifier}: "))
    if len(missing) == 1:
        raise WeightsNotFound(f"{classifier}: {missing[0]}")
    if missing:
        raise WeightsNotFound(f"{classifier}: {len(missing)} required files or models are missing: "
                              + " | ".join(f"({i}) {m}" for i, m in enumerate(missing, 1)))
    return results


def file_digest(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file (or of a folder's files, sorted), remembered by path, size and mtime so
    multi-GB checkpoints are hashed once, not on every run."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(p, p.stat()) for p in files]
    # ctime and inode too: a same-size rewrite within one mtime tick must not hit the memo.
    stamp = [(str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for p, st in stats]
    memo_file = Path(cache_dir) / "weights" / "digests.json" if cache_dir else None
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    memo: dict[str, str] = {}
    if memo_file and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if key in memo:
            return memo[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    if memo_file:
        memo[key] = digest
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_file)
    return digest


def write_atomic(path: Path, data: bytes) -> None:
    """Write a weights file so that a concurrent reader sees the old file or the whole new one,
    never half of it (pytest-xdist workers and parallel runs share the cache folder)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
