"""Results that depend on the data but not on the encoder, computed once per folder of runs and shared.

The pixel and PCA baselines and the pixel-space t-SNE map are the same for every run on the same images and
settings, so they live in ``<runs folder>/.latentbench-cache/``, keyed by a hash of the images (all three
splits) and the settings. A damaged entry is recomputed and replaced; a read-only folder only costs the
sharing. ``--force`` does not clear the cache: delete the folder to recompute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from latentbench import embed
from latentbench.data import Splits
from latentbench.evalrun import EvalRun
from latentbench.io import RunFileError

SHARED_CACHE = ".latentbench-cache"


def data_fingerprint(splits: Splits) -> str:
    """sha256 of every split's images and labels: the key of results that depend on the data alone."""
    digest = hashlib.sha256()
    for name in embed.SPLITS:
        part = getattr(splits, name)
        for t in (part.x, part.y):
            digest.update(t.contiguous().cpu().numpy().data)
    return digest.hexdigest()


def shared_cache_path(run: EvalRun, kind: str, params: dict[str, Any], suffix: str) -> Path:
    key = json.dumps({"data": data_fingerprint(run.splits), "device": run.device.type, **params}, sort_keys=True)
    return run.paths.root.parent / SHARED_CACHE / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}{suffix}"


def cached(path: Path, load: Callable[[Path], Any], compute: Callable[[], Any], save: Callable[[Path, Any], None],
            force: bool = False) -> tuple[Any, bool]:
    """``load(path)`` when the shared cache holds it (and not ``force``), else ``compute()`` and try to save it."""
    if path.exists() and not force:
        try:
            return load(path), True
        except (RunFileError, OSError, KeyError, TypeError, ValueError):
            pass  # a damaged cache entry is recomputed and replaced
    value = compute()
    try:
        save(path, value)
    except OSError:
        pass  # a read-only parent folder only costs the sharing
    return value, False
