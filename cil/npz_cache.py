"""Arrays kept on disk as .npz between runs: written whole then renamed; a damaged file is rebuilt.

    dataset = npz_cache.read(path, lambda arrays: arrays["images"])   # None: absent or damaged
    if dataset is None:
        npz_cache.write(path, images=images, labels=labels)

A crash while writing leaves no half-written file (the rename is atomic), and concurrent writers
of the same file both succeed (the last rename wins). A file that cannot be read (truncated,
overwritten, missing an array) is reported on stderr and deleted, so the caller computes it anew:
a cache never stops a run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")


def read(path: Path, extract: Callable[[np.lib.npyio.NpzFile], T]) -> T | None:
    """``extract(arrays)`` of the cached file, or None when it is absent or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as arrays:
            return extract(arrays)
    except Exception as error:  # a damaged zip raises any of several types
        print(f"warning: cache {path} is damaged ({type(error).__name__}: {error}); building it "
              f"again", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def write(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
