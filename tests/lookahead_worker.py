"""Run in a fresh Python process by test_lookahead: load a Lookahead checkpoint and continue training.

argv: input file (from torch.save), output file. The input holds, per case, the wrapper's configuration, the params
at the time of saving, the state_dict and the gradients of the remaining steps (None where a parameter has none);
"built_as", if present, is another configuration to construct the wrapper with (loading restores the saved one).
It is loaded with weights_only=True: the state must be tensors and plain Python types only.
"""

import sys

import torch

import optarena
from optarena.wrappers.accumulation import GradientAccumulation
from optarena.wrappers.lookahead import Lookahead

torch.set_num_threads(1)


def build(params, config):
    base = optarena.Lion(params, lr=config["lr"], weight_decay=0.1)
    if config["accumulate"]:
        base = GradientAccumulation(base, config["accumulate"])
    return Lookahead(base, k=config["k"], alpha=config["alpha"], pullback=config["pullback"])


if __name__ == "__main__":
    payload = torch.load(sys.argv[1], weights_only=True)
    out = {}
    for case, item in payload.items():
        params = [p.clone().requires_grad_() for p in item["params"]]
        optimizer = build(params, item.get("built_as", item["config"]))  # loading restores the saved settings
        optimizer.load_state_dict(item["state_dict"])
        settings = (optimizer.k, optimizer.alpha, optimizer.pullback)
        for grads in item["grads"]:
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad()
        out[case] = {"params": [p.detach() for p in params],
                     "slow": [optimizer.state[p]["slow"] for p in params], "settings_at_load": settings}
    torch.save(out, sys.argv[2])
