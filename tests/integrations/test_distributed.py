"""torch.distributed on CPU with gloo, 2 processes: DDP, FSDP2 (fully_shard), ZeroRedundancyOptimizer and
torch.distributed.checkpoint, each against the single-process run on the full batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import optarena

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402

WORLD = 2


def launch(case: str, out: Path) -> dict[str, Any]:
    """Run ``case`` (or several joined by "+", in the same processes) on WORLD fresh processes (rendezvous through a
    file: no port to pick) and return rank 0's results by case."""
    init_file = out / f"{case}.init"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")])}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    procs = [subprocess.Popen([sys.executable, str(HERE / "distributed_worker.py"), case, str(rank), str(WORLD),
                               str(init_file), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in range(WORLD)]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:  # a hung collective: fail instead of blocking the suite
            for p in procs:
                p.kill()
            raise
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        # Even after the final barrier, gloo's teardown aborted once in ~10 full-suite runs ("terminate called
        # without an active exception", the rank's work all done): that is gloo's exit, not the code under test.
        finished = (out / f"{case}.rank{rank}.done").exists()
        teardown_abort = finished and "terminate called without an active exception" in log
        assert proc.returncode == 0 or teardown_abort, "\n".join(logs)[-6000:]
    return torch.load(out / f"{case}.pt", weights_only=True)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """DDP, FSDP2, ZeRO and the checkpoint's save in one 2-process job: each job's start costs every rank an import
    of torch and a rendezvous. (Loading the checkpoint needs fresh processes: a job of its own.)"""
    out = tmp_path_factory.mktemp("distributed")
    return {**launch("ddp+fsdp2+zero+dcp_save", out), "out": out}


def moved(name: str, kwargs: dict[str, Any]) -> float:
    return max_diff(worker.reference(name, kwargs), [p.detach() for p in worker.make_model().parameters()])


@pytest.mark.xdist_group("distributed")  # one worker runs the module's job for all its tests
def test_ddp_equals_single_process_full_batch(launched: dict[str, Any]) -> None:
    results = launched["ddp"]
    for name, kwargs in worker.DDP_CASES:
        assert moved(name, kwargs) > 1e-4  # the comparison is not between two untrained models
        # float64: only the order of the gradient sums differs (all-reduce of two halves vs one full batch)
        assert max_diff(results[f"{name}{kwargs}"], worker.reference(name, kwargs)) < 1e-12, (name, kwargs)


@pytest.mark.xdist_group("distributed")
def test_fsdp2_sharded_steps_equal_single_process(launched: dict[str, Any]) -> None:
    results = launched["fsdp2"]
    for name, kwargs in worker.FSDP2_CASES:
        assert max_diff(results[f"{name}{kwargs}"], worker.reference(name, kwargs)) < 1e-12, (name, kwargs)
    assert "Adafactor does not support sharded DTensor parameters" in results["adafactor_error"]
    assert "Shard(dim=0)" in results["adafactor_error"]


@pytest.mark.xdist_group("distributed")
def test_zero_redundancy_optimizer_wraps_optarena(launched: dict[str, Any]) -> None:
    results = launched["zero"]
    for name, kwargs in worker.ZERO_CASES:
        key = f"{name}{kwargs}"
        assert max_diff(results[key], worker.reference(name, kwargs)) < 1e-12, key
        assert 0 < results[f"{key} local state"] < 4  # 4 parameters shared between 2 ranks
        # the consolidated state_dict loads into a plain single-process optimizer and matches its state
        model = worker.make_model()
        single = optarena.create_optimizer(model, name, weight_decay=worker.WEIGHT_DECAY, **kwargs)
        worker.train(model, single, worker.batches()[:worker.STEPS], rank=0, world=1)
        consolidated = results[f"{key} state_dict"]
        fresh = optarena.create_optimizer(worker.make_model(), name, weight_decay=worker.WEIGHT_DECAY, **kwargs)
        fresh.load_state_dict(consolidated)
        expected = single.state_dict()["state"]
        assert fresh.state_dict()["state"].keys() == expected.keys()
        for index, state in expected.items():
            for buffer, value in state.items():
                assert torch.allclose(fresh.state_dict()["state"][index][buffer], value, rtol=0, atol=1e-12)
    assert "create_optimizer: 'lion' takes no eps; ignoring eps=1e-08" in results["lion eps warnings"]


def test_zero_refuses_adan_global_clipping() -> None:
    from optarena.integrations.distributed import zero_redundancy_optimizer

    with pytest.raises(ValueError, match="Invalid max_grad_norm: 1.0 under ZeroRedundancyOptimizer"):
        zero_redundancy_optimizer(worker.make_model(), "adan", max_grad_norm=1.0)


def test_zero_checks_lr() -> None:
    # torch's SGD takes a NaN lr: ZeRO then trained to NaN weights without an error (create_optimizer refuses it)
    from optarena.integrations.distributed import zero_redundancy_optimizer

    for lr in (float("nan"), -1.0):
        with pytest.raises(ValueError, match=f"Invalid lr: {lr}"):
            zero_redundancy_optimizer(worker.make_model(), "momentum", lr=lr)


def test_zero_refuses_schedulefree() -> None:
    # ZeRO copied its param_groups' train_mode over the optimizer's before each step: optimizer.optim.train() was
    # undone and step() raised "in eval() mode; call optimizer.train()", which ZeroRedundancyOptimizer does not have
    from optarena.integrations.distributed import zero_redundancy_optimizer

    with pytest.raises(ValueError, match="Invalid optimizer: 'schedulefree_adamw' under ZeroRedundancyOptimizer"):
        zero_redundancy_optimizer(worker.make_model(), "schedulefree_adamw")


@pytest.mark.xdist_group("distributed")
def test_distributed_checkpoint_resumes_identically(launched: dict[str, Any]) -> None:
    uninterrupted = launched["dcp_save"]["uninterrupted"]
    resumed = launch("dcp_load", launched["out"])["dcp_load"]["resumed"]  # fresh processes, other initial weights
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed))
    assert max_diff(uninterrupted, worker.reference("adan", {"max_grad_norm": 0.05}, steps=2 * worker.STEPS)) < 1e-12


def test_checkpoint_resumes_muon_single_process(tmp_path: Path) -> None:
    # set_state_dict hands the optimizer state keyed by parameter names; MuonAdamW must take them as torch's do
    from optarena.integrations.distributed import load_checkpoint, save_checkpoint

    data = worker.batches()
    model = worker.make_model()
    optimizer = optarena.create_optimizer(model, "muon", weight_decay=worker.WEIGHT_DECAY)
    worker.train(model, optimizer, data[:2], rank=0, world=1)
    save_checkpoint(tmp_path / "dcp", model, optimizer)
    worker.train(model, optimizer, data[2:4], rank=0, world=1)
    resumed = worker.make_model(seed=123)
    fresh = optarena.create_optimizer(resumed, "muon", weight_decay=worker.WEIGHT_DECAY)
    load_checkpoint(tmp_path / "dcp", resumed, fresh)
    worker.train(resumed, fresh, data[2:4], rank=0, world=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


@pytest.mark.parametrize("switched_first", [False, True], ids=["fresh", "train-called"])
def test_checkpoint_resumes_schedulefree(tmp_path: Path, switched_first: bool) -> None:
    pytest.importorskip("schedulefree")
    from optarena.integrations.distributed import load_checkpoint, save_checkpoint

    def run(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: list) -> None:
        optimizer.train()
        worker.train(model, optimizer, data, rank=0, world=1)
        optimizer.eval()  # saved and compared at the averaged weights x

    data = worker.batches()
    model = worker.make_model()
    optimizer = optarena.create_optimizer(model, "schedulefree_adamw", weight_decay=worker.WEIGHT_DECAY)
    run(model, optimizer, data[:3])
    save_checkpoint(tmp_path / "dcp", model, optimizer)
    run(model, optimizer, data[3:6])
    resumed = worker.make_model(seed=123)
    fresh = optarena.create_optimizer(resumed, "schedulefree_adamw", weight_decay=worker.WEIGHT_DECAY)
    if switched_first:
        fresh.train()
    load_checkpoint(tmp_path / "dcp", resumed, fresh)
    assert fresh.param_groups[0]["train_mode"] is False  # as saved
    run(resumed, fresh, data[3:6])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


def test_checkpoint_refuses_zero(tmp_path: Path) -> None:
    # save_checkpoint raised ZeRO's "not been consolidated on this rank"; after consolidate_state_dict it saved (one
    # process), and load_checkpoint then raised that same advice, which consolidating cannot satisfy
    from optarena.integrations.distributed import load_checkpoint, save_checkpoint, zero_redundancy_optimizer

    dist.init_process_group("gloo", init_method=(tmp_path / "init").as_uri(), rank=0, world_size=1)
    try:
        model = worker.make_model()
        optimizer = zero_redundancy_optimizer(model, "adan")
        worker.train(model, optimizer, worker.batches()[:1], rank=0, world=1)
        optimizer.consolidate_state_dict(to=0)
        for function in (save_checkpoint, load_checkpoint):
            with pytest.raises(TypeError, match=f"{function.__name__}: ZeroRedundancyOptimizer's state .*"
                                                r"consolidate_state_dict\(to=0\)"):
                function(tmp_path / "dcp", model, optimizer)
    finally:
        dist.destroy_process_group()


def test_int8_state_refuses_dtensor_parameters_and_bf16_state_steps_them(tmp_path: Path) -> None:
    # 8-bit codes are plain tensors: under fully_shard the first step failed deep inside torch with "aten._foreach_add_
    # .List got mixed torch.Tensor and DTensor" (Lion) or "aten.copy_.default got mixed ..." (Adan)
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo", init_method=(tmp_path / "init").as_uri(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        start, grad = torch.randn(64, 128), torch.randn(64, 128)
        sharded = torch.nn.Parameter(distribute_tensor(start.clone(), mesh, [Shard(0)]))
        small = torch.nn.Parameter(distribute_tensor(torch.randn(8), mesh, [Shard(0)]))  # fp32 state: taken
        for cls in (optarena.Lion, optarena.Adan):
            with pytest.raises(ValueError, match=r"Invalid state_dtype: 'int8' for a DTensor parameter \(shape "
                                                 r"\(64, 128\), placements \(Shard\(dim=0\),\)"):
                cls([sharded, small], state_dtype="int8")
            cls([small], state_dtype="int8")
            opt = cls([sharded], state_dtype=torch.bfloat16)  # what the message advises
            opt.param_groups[0]["state_dtype"] = "int8"  # set mid-run: checked before the step, nothing moved
            sharded.grad = distribute_tensor(grad, mesh, [Shard(0)])
            with pytest.raises(ValueError, match="Invalid state_dtype: 'int8' for a DTensor parameter"):
                opt.step()
            assert torch.equal(sharded.full_tensor(), start)
            opt.param_groups[0]["state_dtype"] = torch.bfloat16
            plain = torch.nn.Parameter(start.clone())
            plain.grad = grad
            reference = cls([plain], state_dtype=torch.bfloat16)
            for _ in range(3):
                opt.step()
                reference.step()
            assert torch.equal(sharded.full_tensor(), plain.detach())
            sharded.data.copy_(distribute_tensor(start, mesh, [Shard(0)]))
    finally:
        dist.destroy_process_group()
