"""Run in a fresh Python process by test_accumulation: load a GradientAccumulation checkpoint and continue.

argv: input file (from torch.save), output file. The input holds, per case, the base's name, the params at the time
of saving, the state_dict and the gradients of the remaining micro-steps (None where a parameter has none), and may
hold "built_as", other settings to construct the wrapper with (loading must restore the saved ones). It is loaded
with weights_only=True: the state must be tensors and plain Python types only.
"""

import sys

import torch

import optarena
from optarena.wrappers.accumulation import GradientAccumulation

torch.set_num_threads(1)

BASES = {
    "lion": lambda params: optarena.Lion(params, lr=1e-2, weight_decay=0.1),
    "adan": lambda params: optarena.Adan(params, lr=1e-2, weight_decay=0.02),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=False),
}


def build(base: str, params, steps: int, skip_nonfinite: bool = False) -> GradientAccumulation:
    return GradientAccumulation(BASES[base](params), steps, skip_nonfinite=skip_nonfinite)


if __name__ == "__main__":
    payload = torch.load(sys.argv[1], weights_only=True)
    out = {}
    for case, item in payload.items():
        params = [p.clone().requires_grad_() for p in item["params"]]
        built = item.get("built_as", item)  # built with other settings: the checkpoint's must be restored
        optimizer = build(item["base"], params, built["steps"], built["skip_nonfinite"])
        optimizer.load_state_dict(item["state_dict"])
        counters = (optimizer.micro_step, optimizer.skipped_updates)
        settings = (optimizer.steps, optimizer.skip_nonfinite)
        for grads in item["grads"]:
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad()
        out[case] = {"params": [p.detach() for p in params], "counters_at_load": counters, "settings_at_load": settings,
                     "skipped_updates": optimizer.skipped_updates}
    torch.save(out, sys.argv[2])
