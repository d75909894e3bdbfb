"""A Lightning workload: the user's ``LightningModule`` (and ``LightningDataModule``) trained by a Lightning
``Trainer`` with the run's optimizer and the arena's schedule in place of ``configure_optimizers``.

``lightning:pkg.module:ModuleClass[:DataModuleClass][:key=value...]`` builds both classes with no arguments
(without a DataModule the module's own ``train_dataloader``/``val_dataloader`` are used);
``lightning:pkg.module:factory`` calls ``factory(budget=...)`` (the keyword if it takes it), which returns a
:class:`LightningWorkload`. Options: ``metric`` (a name the module logs with ``self.log`` in validation; default
``val_loss``), ``higher_is_better`` (default false), ``steps`` (optimizer steps; default by budget),
``weight_decay`` (AdamW scale, translated per optimizer as the arena does), ``evals`` (validations per run).

Each run: ``seed_everything(seed, workers=True)``, then the module and DataModule are built (so the initial weights
and the loaders' shuffling follow the seed), the optimizer is :func:`optarena.create_optimizer` over the module,
the schedule is :func:`optarena.arena.optimizer_setup.lr_multiplier` stepped per optimizer step, and validation runs
every ``steps / evals`` steps; the metric is what the module logged (``trainer.callback_metrics``).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...integrations.torchvision_nms import install as install_nms
from ...registry import create_optimizer, get_optimizer_info
from ..catalog import call_factory
from ..optimizer_setup import arena_weight_decay, lr_multiplier, run_length_kwargs, ultralytics_only
from ..runner import weights_digest
from . import _digest, workload_task
from .common import Diverged, Recorder, finite_float, flag, option, positive_int, resolve, run_dir, target_option

STEPS = {"tiny": 20, "quick": 300, "full": 2000}


@dataclass
class LightningWorkload:
    """What a ``lightning:pkg.module:factory`` factory returns."""

    model: Callable[[], Any]
    """Builds the LightningModule (called after ``seed_everything``)."""
    datamodule: Callable[[], Any] | None = None
    metric: str = "val_loss"
    higher_is_better: bool = False
    steps: int | None = None
    weight_decay: float = 0.0
    batch_size: int = 0
    """Reported only (the loaders own the batch size); 0: unknown."""
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``lightning.Trainer`` arguments (precision, gradient_clip_val, ...)."""


def _load(spec: str, positional: list[str], budget: str) -> tuple[LightningWorkload, str | None]:
    install_nms()  # lightning imports torchvision (through torchmetrics)
    from lightning.pytorch import LightningDataModule, LightningModule

    if len(positional) not in (2, 3):
        raise ValueError(f"Invalid task: {spec!r} (expected 'lightning:pkg.module:ModuleClass[:DataModuleClass]' or "
                         "'lightning:pkg.module:factory')")
    target, source = resolve(spec, positional[0], positional[1])
    if inspect.isclass(target) and issubclass(target, LightningModule):
        datamodule = resolve(spec, positional[0], positional[2])[0] if len(positional) == 3 else None
        if datamodule is not None and not (inspect.isclass(datamodule) and issubclass(datamodule,
                                                                                        LightningDataModule)):
            raise ValueError(f"Invalid task: {spec!r} ({positional[2]!r} is not a LightningDataModule class)")
        return LightningWorkload(model=target, datamodule=datamodule), source
    if not callable(target) or len(positional) == 3:
        raise ValueError(f"Invalid task: {spec!r} ({positional[1]!r} is neither a LightningModule class nor a "
                         "factory function)")
    made = call_factory(spec, target, budget, "a LightningWorkload")
    if not isinstance(made, LightningWorkload):
        raise ValueError(f"Invalid task: {spec!r} returned {type(made).__name__}, not LightningWorkload")
    return made, source


def lightning_task(spec: str, positional: list[str], options: dict[str, Any], budget: str):
    workload, source = _load(spec, positional, budget)
    known = {"metric", "higher_is_better", "steps", "weight_decay", "evals", "name", "target"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Invalid task: {spec!r} (unknown options {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))})")

    metric = option(options, "metric", workload.metric)
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"Invalid task: {spec!r} (metric={metric!r} is not a name the module logs)")
    higher = flag(spec, "higher_is_better", option(options, "higher_is_better", workload.higher_is_better))
    steps = positive_int(spec, "steps", option(options, "steps", workload.steps or STEPS[budget]))
    weight_decay = finite_float(spec, "weight_decay", option(options, "weight_decay", workload.weight_decay),
                                minimum=0)
    evals = positive_int(spec, "evals", option(options, "evals", 10))
    target = target_option(spec, options)
    name = options.get("name") or f"lightning-{positional[1]}"
    fingerprint = _digest(spec, metric, higher, steps, weight_decay, evals, budget,
                          files=(source, __file__))

    def run(optimizer: str, lr: float, seed: int, batch_size: int, *, device: torch.device,
            heartbeat: Callable[[], None] | None = None, out: Path | None = None) -> Any:
        return _run(workload, task.name, metric, higher, steps, weight_decay, max(1, steps // evals), optimizer, lr,
                    seed, device=device, heartbeat=heartbeat, out=out, target=target)

    task = workload_task(name, run, framework="lightning", batch_size_owner="its DataModule", metric=metric,
                         higher_is_better=higher, steps=steps,
                         batch_size=workload.batch_size or 1, target=target, fingerprint=fingerprint,
                         description=f"Lightning {positional[1]}, {steps} steps, metric {metric}")
    return task


def _run(workload: LightningWorkload, task_name: str, metric: str, higher: bool, steps: int, weight_decay: float,
         eval_every: int, optimizer_name: str, lr: float, seed: int, *, device: torch.device,
         heartbeat: Callable[[], None] | None, out: Path | None, target: float | None) -> Any:
    install_nms()
    import lightning.pytorch as pl

    from ...integrations.lightning import ScheduleFreeModes

    ultralytics_only(optimizer_name)
    record = Recorder(device, higher, target, optimizer_name)
    pl.seed_everything(seed, workers=True, verbose=False)
    module = workload.model()
    datamodule = workload.datamodule() if workload.datamodule is not None else None
    record.digest = weights_digest(module)
    built: dict[str, Any] = {}

    def configure_optimizers(self: Any) -> dict[str, Any]:
        optimizer = create_optimizer(self, optimizer_name, lr=lr, **arena_weight_decay(optimizer_name, weight_decay),
                                     **run_length_kwargs(optimizer_name, steps))
        built["optimizer"] = optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(optimizer_name, steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    module.configure_optimizers = types.MethodType(configure_optimizers, module)

    class Measure(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            record.step_start()

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            record.before_optimizer()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            record.step_end(None if loss is None else float(loss))
            if heartbeat is not None:
                heartbeat()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            if metric not in trainer.callback_metrics:
                raise ValueError(f"Invalid metric: {metric!r} (the module logged {sorted(trainer.callback_metrics)}"
                                 "; name one with --metric or the spec's metric=)")
            record.evaluated(trainer.global_step, float(trainer.callback_metrics[metric]), pl_module)

    callbacks = [Measure()]
    if get_optimizer_info(optimizer_name.removeprefix("lookahead_")).train_eval_modes:
        callbacks.append(ScheduleFreeModes())
    trainer = pl.Trainer(
        max_steps=steps, max_epochs=-1, val_check_interval=eval_every, check_val_every_n_epoch=None,
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
        default_root_dir=str(run_dir(out, "lightning", task_name, optimizer_name, lr, seed)),
        **workload.trainer_kwargs)
    because = None
    try:
        trainer.fit(module, datamodule=datamodule)
        if not record.eval_steps or record.eval_steps[-1] != trainer.global_step:
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except Diverged as err:
        because = str(err)
    return record.result(trainer.global_step, built.get("optimizer"), module, because)
