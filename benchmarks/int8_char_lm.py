"""8-bit against fp32 optimizer state on the arena's ``char_lm`` task: final validation loss (nats/char) per optimizer
and seed, through the arena's own training loop (``train_once``: the task's model, data, steps, weight decay and
cosine schedule).

    python benchmarks/int8_char_lm.py [--budget quick] [--seeds 0,1,2] [--optimizers lion,adan,...]

The learning rates are the arena's tuned ones on char_lm (README's results table: Lion 1e-3, RLion 9.49e-3, Adan
3.16e-3) and AdamW's tuned 3.16e-3 for AdaX and AdEMAMix, which the arena did not tune there.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from optarena.arena.runner import train_once
from optarena.arena.tasks import make_char_lm
from optarena.optim import quant

LRS = {"lion": 1e-3, "rlion": 9.49e-3, "adan": 3.16e-3, "adax": 3.16e-3, "ademamix": 3.16e-3}


def quantized_fraction(budget: str) -> float:
    """The fraction of char_lm's parameters whose state ``state_dtype="int8"`` stores in 8 bits."""
    params = list(make_char_lm(budget).make_model().parameters())
    return sum(p.numel() for p in params if quant.quantizes(p)) / sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--optimizers", default=",".join(LRS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the arena's workers
    seeds = [int(s) for s in args.seeds.split(",")]
    task = make_char_lm(args.budget)
    print(f"char_lm, {args.budget} budget ({task.steps} steps); parameters with 8-bit state: "
          f"{quantized_fraction(args.budget):.1%}")
    print("| optimizer | lr | " + " | ".join(f"seed {s} fp32 → int8" for s in seeds) + " | mean int8 − fp32 |")
    print("|---|---|" + "---|" * (len(seeds) + 1))
    for name in args.optimizers.split(","):
        pairs = []
        for seed in seeds:
            fp32, int8 = (train_once(task, name, LRS[name], seed, optimizer_kwargs=kwargs).final_metric
                          for kwargs in ({}, {"state_dtype": "int8"}))
            pairs.append((fp32, int8))
        gap = statistics.fmean(b - a for a, b in pairs)
        print(f"| {name} | {LRS[name]:g} | " + " | ".join(f"{a:.3f} → {b:.3f}" for a, b in pairs) + f" | {gap:+.4f} |")


if __name__ == "__main__":
    main()
