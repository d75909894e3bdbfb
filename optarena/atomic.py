"""Files written whole or not at all: the arena's report, ``optarena speed --json``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it over ``path``: a full disk or a crash leaves
    the previous file (or none), never a truncated one."""
    # named per writer: two of one path (commands sharing a folder, on one machine or several) must not share one
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
