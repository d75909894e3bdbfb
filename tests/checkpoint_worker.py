"""Run in a fresh Python process by the checkpoint tests: load an optimizer checkpoint and continue training.

argv: input file (from torch.save), output file. The input holds, per case, the params after k steps, the
optimizer's state_dict, the gradients of the remaining steps and the path arguments (and optionally the case's name,
where one case is saved from several paths). It is loaded with weights_only=True, as the Hugging Face Trainer does:
the state must be tensors and plain Python types only.
"""

import sys

import torch
from cases import build

if __name__ == "__main__":
    payload = torch.load(sys.argv[1], weights_only=True)
    out = {}
    for case, item in payload.items():
        params = [p.clone() for p in item["params"]]
        optimizer = build(item.get("case", case), params, **item["path"])
        optimizer.load_state_dict(item["state_dict"])
        for grads in item["grads"]:
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
        out[case] = {"params": params, "state_dtypes": [str(v.dtype) for s in optimizer.state.values()
                                                        for k, v in s.items() if k != "step"],
                     "fused_kernels_made": getattr(optimizer, "fused_kernels_made", 0)}
    torch.save(out, sys.argv[2])
