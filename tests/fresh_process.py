"""Checkpoints must resume in a *new* Python process: this runs a worker script there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

TESTS_DIR = Path(__file__).parent


def continue_in_fresh_process(worker: str, payload: Any, tmp_path: Path) -> Any:
    """Save ``payload``, run ``tests/<worker>`` in a new interpreter (it loads the payload with
    ``weights_only=True``, as the Hugging Face Trainer does, and saves its result) and return that result."""
    src, dst = tmp_path / "checkpoint.pt", tmp_path / "continued.pt"
    torch.save(payload, src)
    subprocess.run([sys.executable, str(TESTS_DIR / worker), str(src), str(dst)], check=True, cwd=TESTS_DIR)
    return torch.load(dst, weights_only=True)
