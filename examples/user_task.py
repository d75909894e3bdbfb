"""A user task for `optarena compare --task examples/user_task.py:make_task` (the README's example)."""
import torch
from torch import nn

from optarena.arena import Task

X = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
Y = (X.norm(dim=1) > 1.18).long()  # fixed data, independent of the run's seed: 400 to train, 112 to validate


def batches(generator, batch_size):  # every bit of data-order randomness comes from `generator`
    while True:
        for index in torch.randperm(400, generator=generator).split(batch_size):
            yield X[index], Y[index]


def accuracy(model):  # called in eval mode under torch.no_grad()
    return (model(X[400:]).argmax(1) == Y[400:]).float().mean().item()


def make_task(budget="quick"):
    return Task(name="ring", make_model=lambda: nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 2)),
                make_batches=batches, loss=lambda model, b: nn.functional.cross_entropy(model(b[0]), b[1]),
                evaluate=accuracy, metric="val_accuracy", higher_is_better=True, target=0.9,
                steps={"tiny": 20, "quick": 300, "full": 2000}[budget], batch_size=32)
