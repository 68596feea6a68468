"""Datasets: the embedded demo, local folders, hub-layout parquet files and the hub itself.

``load_dataset(spec, ...)`` is the one entry point; every loader returns a
:class:`~pytest_unsafebench.dataset.records.Dataset` of lazily decoded records.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ..errors import DatasetError
from ..options import DEFAULT_SEED
from .records import Dataset, Finding, Record
from .sampling import select, stratified_limit

__all__ = ["Dataset", "Finding", "Record", "default_cache_dir", "load_dataset"]



def default_cache_dir() -> Path:
    """``$UNSAFEBENCH_CACHE_DIR``, else ``.pytest_cache/unsafebench`` under the working
    directory."""
    env = os.environ.get("UNSAFEBENCH_CACHE_DIR")
    return Path(env) if env else Path.cwd() / ".pytest_cache" / "unsafebench"


def _load_unfiltered(spec: str, seed: int, cache_dir: Path) -> Dataset:
    if spec == "demo":
        from .demo import ensure_demo_dataset

        root = ensure_demo_dataset(cache_dir / "datasets", seed=seed)
        from .folder import load_folder

        ds = load_folder(root, spec="demo")
        return replace(ds, name="demo", synthetic=True, description=(
            f"embedded synthetic demo dataset (seed {seed}); not real UnsafeBench images, "
            "so its numbers say nothing about real-world moderation"))
    if spec.startswith("hf:"):
        from .hub import load_hub

        return load_hub(spec[3:], cache_dir=cache_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset {spec!r}: no such file or folder; use 'demo', a folder with "
            "metadata.csv/metadata.jsonl, UnsafeBench parquet files, or hf:yiting/UnsafeBench"
        )
    from .folder import find_manifest, load_folder

    if path.is_dir() and find_manifest(path):
        return load_folder(path, spec=spec)
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        from .parquet import load_parquet

        return load_parquet(path, spec=spec)
    raise DatasetError(
        f"dataset {spec!r}: found neither metadata.csv/metadata.jsonl nor *.parquet files in it"
    )


def load_dataset(
    spec: str = "demo",
    *,
    split: str = "all",
    categories: Iterable[str] | None = None,
    sources: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    cache_dir: Path | str | None = None,
) -> Dataset:
    """Load a dataset by spec and apply the run's filters (the same call the plugin makes)."""
    ds = _load_unfiltered(spec, seed, Path(cache_dir) if cache_dir else default_cache_dir())
    records = select(ds.records, split=split, categories=categories, sources=sources)
    if limit is not None:
        records = stratified_limit(records, limit, seed)
    return replace(ds, records=records)
