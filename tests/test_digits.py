"""Every registered optimizer, at its documented default lr, learns the digits task in a fixed small budget."""

from __future__ import annotations

import pytest

import optarena
from optarena.demo import train_digits

BUDGET_EPOCHS = 30  # 690 steps of batch 64; Lion at its default lr 1e-4 needs about all of them


TRAINABLE = [n for n in optarena.list_optimizers() if n not in optarena.list_optimizers("ultralytics")]  # not musgd


@pytest.mark.parametrize("name", TRAINABLE)
def test_default_lr_reaches_90_percent_validation_accuracy(name: str) -> None:
    result = train_digits(name, epochs=BUDGET_EPOCHS, seed=0)
    assert not result.diverged
    assert result.val_accuracy >= 0.90, f"{name}: {result.val_accuracy:.3f}"
