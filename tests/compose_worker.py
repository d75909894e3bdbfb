"""Fresh-process half of test_wrappers_compose: load a two-level wrapper checkpoint and continue."""

import sys

import torch

import optarena
from optarena.wrappers import GradientAccumulation, Lookahead


def build(params):
    return Lookahead(GradientAccumulation(optarena.Lion(params, lr=1e-2, weight_decay=0.1), steps=3), k=2)


if __name__ == "__main__":
    payload = torch.load(sys.argv[1], weights_only=True)
    params = [p.clone() for p in payload["params"]]
    optimizer = build(params)
    optimizer.load_state_dict(payload["state_dict"])
    for grads in payload["grads"]:
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    torch.save(params, sys.argv[2])
