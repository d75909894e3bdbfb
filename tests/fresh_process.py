"""Checkpoints must resume in a *new* Python process: this runs a worker script there."""

from __future__ import annotations

import copy
import os
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
    # one thread, as in the tests (conftest): a fused kernel names its thread count, so the new process then reads
    # the kernels compiled here from the run's inductor cache instead of compiling them again
    subprocess.run([sys.executable, str(TESTS_DIR / worker), str(src), str(dst)], check=True, cwd=TESTS_DIR,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return torch.load(dst, weights_only=True)


def checkpoint_midway(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                      grads_per_step: list[list[torch.Tensor]], k: int) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Step through the first ``k`` gradient sets, snapshot (params, state_dict, remaining gradients) for a worker,
    then finish the run here. Returns the snapshot and the uninterrupted run's final params."""

    def feed(steps: list[list[torch.Tensor]]) -> None:
        for grads in steps:
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()

    feed(grads_per_step[:k])
    snapshot = {"params": [p.detach().clone() for p in params],
                "state_dict": copy.deepcopy(optimizer.state_dict()),  # state_dict() holds live tensors
                "grads": grads_per_step[k:]}
    feed(grads_per_step[k:])
    return snapshot, [p.detach().clone() for p in params]
