"""The built-in demo: an MLP on scikit-learn's digits, trained with several optimizers side by side.

Every optimizer sees the same initial weights and the same batch order (one seed), and its optimizer step is
timed apart from forward/backward. This is the seed of the arena (``optarena compare``, a later issue).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .registry import base_optimizer_info, create_optimizer, set_optimizer_mode, state_bytes

DEFAULT_OPTIMIZERS = ("adamw", "lion")


@functools.lru_cache(maxsize=8)
def load_digits_split(seed: int = 0, val_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download), split at random and standardised with the
    training split's per-pixel mean and std."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("the digits demo needs scikit-learn: pip install 'optarena[arena]'") from err
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    mean, std = x[train].mean(dim=0), x[train].std(dim=0).clamp(min=1.0)  # corner pixels are nearly constant
    x = (x - mean) / std
    return x[train], y[train], x[val], y[val]


def make_mlp(hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, 10))


@dataclass
class DigitsResult:
    optimizer: str
    lr: float
    val_accuracy: float
    val_loss: float
    train_loss: float
    steps: int
    step_ms: float
    """Median wall time of ``optimizer.step()`` alone."""
    state_bytes: int
    params: int
    diverged: bool


def train_digits(name: str, *, lr: float | None = None, weight_decay: float = 0.0, epochs: int = 30,
                 batch_size: int = 64, seed: int = 0, hidden: int = 128, **optimizer_kwargs: Any) -> DigitsResult:
    """Train the MLP with optimizer ``name`` (any registered name) and evaluate it on the validation split."""
    x_train, y_train, x_val, y_val = load_digits_split(seed)
    torch.manual_seed(seed)
    model = make_mlp(hidden)
    optimizer = create_optimizer(model, name, lr=lr, weight_decay=weight_decay, **optimizer_kwargs)
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(seed + 1)
    step_times, steps, loss = [], 0, torch.tensor(0.0)
    set_optimizer_mode(optimizer, True)  # schedule-free: train at y, evaluate at x
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=order_rng).split(batch_size):
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            start = time.perf_counter()
            optimizer.step()
            step_times.append(time.perf_counter() - start)
            steps += 1
    set_optimizer_mode(optimizer, False)
    with torch.no_grad():
        logits = model(x_val)
        val_loss = loss_fn(logits, y_val).item()
        accuracy = (logits.argmax(dim=1) == y_val).float().mean().item()
    used_lr = base_optimizer_info(name).default_lr if lr is None else lr  # lookahead_lion: lion's lr
    diverged = not (math.isfinite(val_loss) and math.isfinite(loss.item()))
    return DigitsResult(name, used_lr, accuracy, val_loss, loss.item(), steps, 1e3 * statistics.median(step_times),
                        state_bytes(optimizer), sum(p.numel() for p in model.parameters()), diverged)


def format_table(results: Sequence[DigitsResult]) -> str:
    width = max([10, *(len(r.optimizer) for r in results)])  # lookahead_lion, schedulefree_adamw
    header = (f"{'optimizer':<{width}} {'lr':>8} {'val acc':>8} {'val loss':>9} {'step ms':>8} {'state B/param':>13}")
    lines = [header, "-" * len(header)]
    for r in results:
        acc = "diverged" if r.diverged else f"{100 * r.val_accuracy:.1f}%"
        lines.append(f"{r.optimizer:<{width}} {r.lr:>8.1e} {acc:>8} {r.val_loss:>9.4f} {r.step_ms:>8.3f} "
                     f"{r.state_bytes / r.params:>13.2f}")
    return "\n".join(lines)


def run_demo(optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, *, epochs: int = 30, seed: int = 0) -> list[DigitsResult]:
    """Train each optimizer at its documented default lr and print a comparison table."""
    torch.set_flush_denormal(True)  # subnormal second moments would slow AdamW 4x and fake a speed win
    torch.set_num_threads(1)  # a 35k-parameter MLP runs 9x slower on 2 threads than on 1 (thread overhead)
    print(f"optarena demo: MLP 64-128-128-10 on scikit-learn digits, {epochs} epochs, batch 64, seed {seed}, "
          f"each optimizer at its default lr")
    names = dict.fromkeys(n.lower() for n in optimizers)  # as compare does: a name given twice trains once
    results = [train_digits(name, epochs=epochs, seed=seed) for name in names]
    print(format_table(results))
    return results
