"""The dataset straight from the Hugging Face hub (``hf:yiting/UnsafeBench``) via ``datasets``.

``yiting/UnsafeBench`` is gated: request access on its page, then ``huggingface-cli login`` or
set ``HF_TOKEN`` in the environment. Credentials come only from the environment or the hub's
login cache, never from an argument. The download lives in the Hugging Face cache
(``HF_HOME`` / ``HF_DATASETS_CACHE``), not in the pytest cache, so ``--cache-clear`` does not
throw a gigabyte away. Images stay encoded (``decode=False``) and are read lazily.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..taxonomy import SPLITS
from .parquet import (
    LAYOUT,
    REQUIRED_COLUMNS,
    PendingRow,
    apply_label_names,
    archive_key,
    build_records,
    label_names,
    row_finding,
)
from .records import Dataset, Finding, content_hash

# Exception class names and message fragments that mean "no access" rather than "bad data".
_ACCESS_CLASSES = ("GatedRepoError", "RepositoryNotFoundError", "DatasetNotFoundError",
                   "HfHubHTTPError", "HTTPError", "LocalEntryNotFoundError",
                   "OfflineModeIsEnabled", "ConnectionError", "Timeout")
_ACCESS_WORDS = ("gated", "401", "403", "unauthorized", "forbidden", "authenticat", "token",
                 "offline", "connect", "timed out", "cannot be accessed", "network")


def _install_error() -> DatasetError:
    return DatasetError(
        "loading hf:... datasets needs the 'datasets' library: pip install "
        "'pytest-unsafebench[hub]'; or download the UnsafeBench parquet files and pass their "
        "folder to --unsafebench-dataset (needs only pytest-unsafebench[parquet])"
    )


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        text = text.replace(token, "***")
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def _is_access_problem(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names.intersection(_ACCESS_CLASSES):
        return True
    message = str(exc).lower()
    return any(word in message for word in _ACCESS_WORDS)


# The first datasets release that runs a dataset's own loading script (code from the hub
# repository) only when trust_remote_code=True is passed, which this plugin never does.
SAFE_DATASETS = (2, 20)


def _refuse_script_runner(version: str) -> None:
    parts = version.split(".")[:2]
    numbers = tuple(int(p) if p.isdecimal() else 0 for p in parts)
    if numbers < SAFE_DATASETS:
        raise DatasetError(
            f"datasets {version} runs a hub dataset's loading script (code from the dataset's "
            "repository) by default; upgrade it: pip install 'datasets>=2.20'")


def _load_error(repo_id: str, exc: BaseException) -> DatasetError:
    if _is_access_problem(exc):
        return DatasetError(
            f"cannot load {repo_id} from the Hugging Face hub ({_describe(exc)}). The dataset is "
            f"gated: request access at https://huggingface.co/datasets/{repo_id}, then run "
            "`huggingface-cli login` or set HF_TOKEN in the environment (check the network, or "
            "HF_HUB_OFFLINE if set); or point --unsafebench-dataset at a local copy of its "
            "parquet files"
        )
    return DatasetError(
        f"cannot load {repo_id} from the Hugging Face hub ({_describe(exc)}); point "
        "--unsafebench-dataset at a local copy of its parquet files instead"
    )


class _HubReader:
    """Lazy, thread-safe access to one split's encoded image bytes by row index."""

    def __init__(self, split: Any) -> None:
        self._split = split
        self._lock = threading.Lock()

    def read(self, index: int) -> bytes:
        with self._lock:
            image = self._split[index]["image"]
        data: bytes | None = image.get("bytes") if isinstance(image, dict) else image
        if data is None:
            raise DatasetError(f"row {index} has no image bytes any more")
        return data


def load_hub(repo_id: str, cache_dir: Path) -> Dataset:
    """All splits of a hub dataset in the ``yiting/UnsafeBench`` layout.

    Splits are taken in name order and rows in dataset order, the same order as the local
    parquet copy (``data/test-*`` before ``data/train-*``), so both give the same ids.
    ``cache_dir`` is the plugin's cache; the download itself goes to the Hugging Face cache.
    """
    try:
        import datasets
    except ImportError:
        raise _install_error() from None
    _refuse_script_runner(getattr(datasets, "__version__", "0"))
    try:
        splits = datasets.load_dataset(repo_id)
    except Exception as exc:  # datasets/huggingface_hub raise many unrelated classes
        raise _load_error(repo_id, exc) from None
    findings: list[Finding] = []
    pending: list[PendingRow] = []
    for split_name in sorted(splits):
        split = splits[split_name]
        where = f"{repo_id}[{split_name}]"
        missing = [c for c in REQUIRED_COLUMNS if c not in split.column_names]
        if missing:
            raise DatasetError(f"{where}: missing column(s) {missing}; {LAYOUT}")
        if split_name not in SPLITS:
            findings.append(Finding("unknown-split", where,
                                    f"split {split_name!r} is not one of {list(SPLITS)}; its "
                                    f"{len(split)} rows are excluded"))
            continue
        try:
            split = split.cast_column("image", datasets.Image(decode=False))
        except Exception as exc:
            raise DatasetError(f"{where}: the image column is not an image ({_describe(exc)}); "
                               f"{LAYOUT}") from None
        names = label_names(dict(split.features))
        reader = _HubReader(split)
        for index, row in enumerate(split):
            locator = f"{where}:row {index}"
            image = row.pop("image")
            data = image.get("bytes") if isinstance(image, dict) else image
            row = apply_label_names(row, names) | {"split": split_name}
            problem = row_finding(row, data, locator)
            if problem:
                findings.append(problem)
                continue
            assert data is not None  # row_finding reports null bytes
            pending.append(PendingRow(row, locator, content_hash(data),
                                      partial(reader.read, index),
                                      archive_key(row, split_name, index)))
    return Dataset(name=repo_id.rsplit("/", 1)[-1], spec=f"hf:{repo_id}",
                   records=build_records(pending), findings=findings,
                   description=f"Hugging Face hub dataset {repo_id} (all splits)")
