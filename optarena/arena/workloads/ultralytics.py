"""One arena run through ultralytics' own detection trainer: the user's model yaml and data.yaml, the run's optimizer
and lr0, validation mAP50-95 after every epoch as the curve.

What is the same for every optimizer: the seed (``seed=``, ``deterministic=True``, so the initial weights and the
augmentation), ultralytics' data order, its warm-up (``warmup_epochs``; the bias warm-up starts at 0, as
``optimizer=auto`` does, rather than at SGD's 0.1) and its linear decay to ``lrf`` (Amos, which decays its lr itself,
gets ``lrf=1.0``), its parameter groups and
weight decay, gradient clipping and EMA. ``lr0`` is the run's lr. ultralytics' own names (``SGD``, ``AdamW``,
``MuSGD``, ...) are built by ultralytics; the other registry names by optarena over ultralytics' groups
(:mod:`optarena.integrations.ultralytics`).

Where ultralytics would recover from a NaN loss by reloading ``last.pt``, the run ends as diverged instead.

Timing: the step ms is the optimizer's own ``step()``, as on every other task. ultralytics' ``optimizer_step`` also
clips the gradients and updates the EMA; that costs every optimizer the same, so it is fair, but counted in the step
it would pull every ratio of step times towards 1 (Lion's saving over AdamW, say). It is kept out of the step ms and
of fwd+bwd, and counted in the training seconds (time to target), where it belongs to the training.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...info import LOOKAHEAD_PREFIX, base_optimizer_info
from ...registry import state_bytes
from ..runner import MAX_CURVE_POINTS, RunResult, _PeakMemory, _subsample, weights_digest
from ..runner import _warm_up as warm_up_optimizer

METRIC_KEY = "metrics/mAP50-95(B)"
#: Arguments the arena sets for every run; a workload may not override them.
ARENA_ARGS = frozenset({"model", "data", "optimizer", "lr0", "seed", "deterministic", "device", "project", "name",
                        "exist_ok", "resume", "workers", "plots", "val", "time", "pretrained"})


class Diverged(Exception):
    """Raised inside ultralytics' loop to end a run whose loss or validation became non-finite."""


def ultralytics_name(optimizer: str) -> str:
    """The ``optimizer=`` value: ultralytics' own spelling for the names it builds, the registry name otherwise."""
    info = base_optimizer_info(optimizer)
    if info.ultralytics_name and not optimizer.lower().startswith(LOOKAHEAD_PREFIX):
        return info.ultralytics_name
    return optimizer


def _trainer_class() -> type:
    # ultralytics reads YOLO_VERBOSE once, on import: without it every run's progress bars would flood the
    # arena's terminal (the arena reports progress itself); a user's explicit setting wins
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ...integrations.torchvision_nms import install

    install()  # ultralytics' validation needs torchvision's nms; the CPU torch pin's torchvision has no C++ ops
    from ...integrations.ultralytics import OptarenaDetectionTrainer

    class ArenaTrainer(OptarenaDetectionTrainer):
        """The integration's trainer, timed, with NaN recovery replaced by a diverged run and no re-validation of
        best.pt at the end (the last epoch's validation is the final metric)."""

        opt_times: list[float]
        step_times: list[float]

        def optimizer_step(self) -> None:
            # opt_times: the whole optimizer_step (unscale, clip, step, zero_grad, EMA), one per optimizer step, kept
            # out of fwd+bwd; step_times: the optimizer's own step(), the step ms the arena reports on every task,
            # since clipping and the EMA cost every optimizer the same and would shrink every ratio of step times
            # towards 1 (they stay in the training seconds)
            optimizer, start = self.optimizer, time.perf_counter()
            own = "step" in vars(optimizer)
            step = optimizer.step
            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

            def timed(*args: Any, **kwargs: Any) -> Any:
                sync()
                began = time.perf_counter()
                try:
                    return step(*args, **kwargs)
                finally:
                    sync()
                    self.step_times.append(time.perf_counter() - began)

            optimizer.step = timed
            try:
                super().optimizer_step()
            finally:
                if own:
                    optimizer.step = step
                else:
                    del optimizer.step
            self.opt_times.append(time.perf_counter() - start)

        def _handle_nan_recovery(self, epoch: int) -> bool:
            if self.loss is not None and not bool(torch.isfinite(self.loss).all()):
                raise Diverged("non-finite loss")
            if self.fitness is not None and not np.isfinite(self.fitness):
                raise Diverged("non-finite validation fitness")
            return False

        def final_eval(self) -> None:
            pass

    return ArenaTrainer


def _loss_value(tloss: Any) -> float:
    if tloss is None:
        return math.nan
    values = tloss.values() if isinstance(tloss, Mapping) else [tloss]
    return float(sum(float(torch.as_tensor(v).sum()) for v in values))


def run(model: str, data: str, train_args: Mapping[str, Any], task_name: str, optimizer: str, lr: float, seed: int,
        batch_size: int, *, device: torch.device, heartbeat: Callable[[], None] | None = None,
        out: Path | None = None, target: float | None = None) -> RunResult:
    """Train ``model`` on ``data`` with ultralytics' trainer and measure it like :func:`~optarena.arena.runner.
    train_once` does (optimizer steps are ultralytics' ``optimizer_step`` calls, one per ``accumulate`` batches)."""
    threads = torch.get_num_threads()  # ultralytics' select_device resets it to cores - 1
    deterministic = torch.are_deterministic_algorithms_enabled()
    project = Path(out if out is not None else tempfile.mkdtemp(prefix="optarena-ultralytics-")) / "ultralytics"
    args = {"warmup_bias_lr": 0.0, "verbose": False, "amp": False, "save": False, **train_args,
            "model": model, "data": data, "optimizer": ultralytics_name(optimizer), "lr0": lr, "seed": seed,
            "deterministic": True, "batch": batch_size, "device": "cpu" if device.type == "cpu" else str(device),
            "project": str(project / task_name), "name": f"{optimizer}-lr{lr:.4g}-seed{seed}", "exist_ok": True,
            "workers": 0, "plots": False, "val": True, "pretrained": False}
    trainer_class = _trainer_class()  # imports ultralytics (~115 MB resident) once: before the memory baseline
    warm_up_optimizer(device, optimizer)  # its first-use costs before the baseline, as the runner's loop does
    memory = _PeakMemory(device)
    trainer = trainer_class(overrides=args)
    trainer.opt_times, trainer.step_times = [], []
    torch.set_num_threads(threads)
    state: dict[str, Any] = {"batch_start": 0.0, "batch_times": [], "fwd_bwd": [], "train_seconds": 0.0,
                             "digest": None, "eval_steps": [], "eval_metric": [], "loss_steps": [], "train_loss": [],
                             "steps_to_target": None, "seconds_to_target": None}

    def on_train_start(tr: Any) -> None:
        torch.set_num_threads(threads)
        state["digest"] = weights_digest(tr.model)

    def on_batch_start(tr: Any) -> None:
        state["opt_before"] = len(tr.opt_times)
        state["batch_start"] = time.perf_counter()

    def on_batch_end(tr: Any) -> None:
        elapsed = time.perf_counter() - state["batch_start"]
        state["train_seconds"] += elapsed
        stepped = tr.opt_times[state["opt_before"]:]
        state["fwd_bwd"].append(elapsed - sum(stepped))
        if tr.loss is not None and not bool(torch.isfinite(tr.loss).all()):
            raise Diverged("non-finite loss")
        if heartbeat is not None:
            heartbeat()

    def on_fit_epoch_end(tr: Any) -> None:
        step = len(tr.opt_times)
        metric = float(tr.metrics.get(METRIC_KEY, math.nan))
        if not math.isfinite(metric):
            raise Diverged("non-finite metric")
        state["eval_steps"].append(step)
        state["eval_metric"].append(metric)
        state["loss_steps"].append(step)
        state["train_loss"].append(_loss_value(tr.tloss))
        if state["steps_to_target"] is None and target is not None and metric >= target:
            state["steps_to_target"], state["seconds_to_target"] = step, state["train_seconds"]

    for event, callback in (("on_train_start", on_train_start), ("on_train_batch_start", on_batch_start),
                            ("on_train_batch_end", on_batch_end), ("on_fit_epoch_end", on_fit_epoch_end)):
        trainer.add_callback(event, callback)
    because = None
    try:
        trainer.train()
    except Diverged as err:
        because = str(err)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    steps = len(trainer.opt_times)
    metrics = state["eval_metric"]
    skip = 2 if steps > 4 else 0
    return RunResult(
        final_metric=None if because else (metrics[-1] if metrics else None),
        best_metric=max(metrics) if metrics else None,
        diverged=because is not None,
        diverged_at=steps if because else None,
        steps=steps,
        steps_to_target=state["steps_to_target"],
        seconds_to_target=state["seconds_to_target"],
        train_seconds=state["train_seconds"],
        opt_step_ms=1e3 * statistics.median(trainer.step_times[skip:]) if len(trainer.step_times) > skip else math.nan,
        fwd_bwd_ms=1e3 * statistics.median(state["fwd_bwd"][skip:]) if state["fwd_bwd"] else math.nan,
        state_bytes=state_bytes(trainer.optimizer) if trainer.optimizer is not None else 0,
        params=sum(p.numel() for p in trainer.model.parameters()) if trainer.model is not None else 0,
        peak_memory_mb=memory.peak_mb(),
        loss_steps=_subsample(state["loss_steps"], MAX_CURVE_POINTS),
        train_loss=_subsample([v if math.isfinite(v) else None for v in state["train_loss"]], MAX_CURVE_POINTS),
        eval_steps=_subsample(state["eval_steps"], MAX_CURVE_POINTS),
        eval_metric=_subsample(metrics, MAX_CURVE_POINTS),
        diverged_because=because,
        init_digest=state["digest"],
    )
