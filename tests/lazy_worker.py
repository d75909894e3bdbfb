"""Fresh-process half of test_lazy and test_layer_adaptation: load a wrapper checkpoint and continue.

argv: input file (from torch.save), output file. Per case the input holds the params after k steps, the wrapper's
state_dict and the gradients of the remaining steps (sparse ones included); loaded with weights_only=True.
"""

import sys

import torch

import optarena
from optarena.wrappers.layer_adaptation import LayerAdaptation
from optarena.wrappers.lazy import Lazy

CASES = {
    "lazy-lion": lambda ps: Lazy(optarena.Lion(ps, lr=1e-2, weight_decay=0.1)),
    "lazy-adan": lambda ps: Lazy(optarena.Adan(ps, lr=1e-2, weight_decay=0.02)),
    "lazy-adax": lambda ps: Lazy(optarena.AdaX(ps, lr=1e-2, weight_decay=1e-3)),
    "lazy-adamw": lambda ps: Lazy(torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)),
    "lazy-sgd": lambda ps: Lazy(torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=1e-2)),
    "layer-adaptation-adamw": lambda ps: LayerAdaptation(torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01)),
    "layer-adaptation-lion": lambda ps: LayerAdaptation(optarena.Lion(ps, lr=1e-3), exclude=lambda p: p.ndim == 0),
}


def build(case, params):
    return CASES[case](params)


if __name__ == "__main__":
    payload = torch.load(sys.argv[1], weights_only=True)
    out = {}
    for case, item in payload.items():
        params = [p.clone() for p in item["params"]]
        optimizer = build(case, params)
        optimizer.load_state_dict(item["state_dict"])
        for grads in item["grads"]:
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
        out[case] = params
    torch.save(out, sys.argv[2])
