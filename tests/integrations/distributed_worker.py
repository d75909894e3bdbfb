"""One rank of a 2-process gloo job on CPU (started by test_distributed.py), or the single-process reference.

Usage: distributed_worker.py CASES RANK WORLD_SIZE INIT_FILE OUT_DIR. CASES is one case or several joined by "+",
run one after the other in the same process group (each start of a rank costs an import of torch and a rendezvous);
rank 0 saves their results, by case, to OUT_DIR/CASES.pt.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import optarena
from optarena.integrations.distributed import load_checkpoint, save_checkpoint, zero_redundancy_optimizer

STEPS, BATCH = 5, 8
WEIGHT_DECAY = 0.1
#: (registry name, extra kwargs); Adan also with its global-norm clipping active (the first gradient norm is 1.14)
FSDP2_CASES = [("lion", {}), ("rlion", {}), ("adan", {}), ("adan", {"max_grad_norm": 0.05}), ("adax", {})]
DDP_CASES = FSDP2_CASES + [("adafactor", {})]
#: muon: its factory groups (the head to AdamW), one to one with each rank's MuonAdamW groups
ZERO_CASES = [("lion", {}), ("adan", {}), ("adax", {}), ("adafactor", {}), ("muon", {})]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # 5 outputs: FSDP2 shards the (5, 16) weight unevenly (3 + 2 rows), with padding
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=gen, dtype=torch.float64),
             torch.randn(BATCH, 5, generator=gen, dtype=torch.float64)) for _ in range(2 * STEPS)]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data: list, rank: int, world: int) -> None:
    """One step per batch; each rank takes its equal slice, so the averaged gradient is the full batch's."""
    per_rank = BATCH // world
    for x, y in data:
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        loss_fn(model, x[sl], y[sl]).backward()
        optimizer.step()
        optimizer.zero_grad()


def full_params(model: nn.Module) -> list[torch.Tensor]:
    """Whole parameters (gathered from the shards of DTensors; a collective)."""
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in model.parameters()]


def reference(name: str, kwargs: dict[str, Any], steps: int = STEPS) -> list[torch.Tensor]:
    """The single-process run on the full batches."""
    model = make_model()
    optimizer = optarena.create_optimizer(model, name, weight_decay=WEIGHT_DECAY, **kwargs)
    train(model, optimizer, batches()[:steps], rank=0, world=1)
    return full_params(model)


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def run(case: str, rank: int, world: int, out: Path) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    data = batches()
    results: dict[str, Any] = {}
    if case == "ddp":
        for name, kwargs in DDP_CASES:
            model = DDP(make_model())
            optimizer = optarena.create_optimizer(model, name, weight_decay=WEIGHT_DECAY, **kwargs)
            train(model, optimizer, data[:STEPS], rank, world)
            results[f"{name}{kwargs}"] = full_params(model)
    elif case == "fsdp2":
        for name, kwargs in FSDP2_CASES:
            model = shard(make_model())
            optimizer = optarena.create_optimizer(model, name, weight_decay=WEIGHT_DECAY, **kwargs)
            assert all(type(p).__name__ == "DTensor" for p in model.parameters())
            train(model, optimizer, data[:STEPS], rank, world)
            # the state lives on the shards: each rank holds its part of every moment
            state = optimizer.state[next(iter(model.parameters()))]
            assert state["exp_avg"].to_local().shape[0] == 8, state["exp_avg"].to_local().shape
            results[f"{name}{kwargs}"] = full_params(model)
        try:
            optarena.create_optimizer(shard(make_model()), "adafactor")
        except ValueError as e:
            results["adafactor_error"] = str(e)
    elif case == "zero":
        for name, kwargs in ZERO_CASES:
            model = DDP(make_model())
            optimizer = zero_redundancy_optimizer(model, name, weight_decay=WEIGHT_DECAY, **kwargs)
            assert type(optimizer.optim) is optarena.get_optimizer_info(name).cls
            # each rank holds state for its own share of the parameters only
            train(model, optimizer, data[:STEPS], rank, world)
            results[f"{name}{kwargs}"] = full_params(model)
            results[f"{name}{kwargs} local state"] = len(optimizer.optim.state)
            optimizer.consolidate_state_dict(to=0)
            if rank == 0:
                results[f"{name}{kwargs} state_dict"] = optimizer.state_dict()
        with warnings.catch_warnings(record=True) as caught:  # the factory's handling of portable arguments
            warnings.simplefilter("always")
            zero_redundancy_optimizer(make_model(), "lion", eps=1e-8)
        results["lion eps warnings"] = [str(w.message) for w in caught]
    elif case == "dcp_save":
        model = shard(make_model())
        optimizer = optarena.create_optimizer(model, "adan", weight_decay=WEIGHT_DECAY, max_grad_norm=0.05)
        train(model, optimizer, data[:STEPS], rank, world)
        save_checkpoint(out / "dcp", model, optimizer)
        train(model, optimizer, data[STEPS:], rank, world)
        results["uninterrupted"] = full_params(model)
    elif case == "dcp_load":
        model = shard(make_model(seed=123))  # other weights: all must come from the checkpoint
        optimizer = optarena.create_optimizer(model, "adan", weight_decay=WEIGHT_DECAY, max_grad_norm=0.05)
        load_checkpoint(out / "dcp", model, optimizer)
        train(model, optimizer, data[STEPS:], rank, world)
        results["resumed"] = full_params(model)
    else:
        raise ValueError(f"Invalid case: {case!r}")
    return results


def main() -> None:
    cases, rank, world, init_file, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {case: run(case, rank, world, out) for case in cases.split("+")}
        if rank == 0:
            torch.save(results, out / f"{cases}.pt")
        # both ranks done with every collective before either tears gloo down: a rank that destroys the group
        # while its peer still sends aborted with "terminate called without an active exception" (2 runs in ~10)
        dist.barrier()
        # every collective of this rank is done: the test accepts a crash in gloo's teardown after this marker
        (out / f"{cases}.rank{rank}.done").touch()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
