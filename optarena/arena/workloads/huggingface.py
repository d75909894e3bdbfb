"""A Hugging Face workload: ``hf:pkg.module:function[:key=value...]``, where ``function(budget=...)`` (the keyword
if it takes it) returns the inputs ``Trainer.hyperparameter_search`` already uses::

    {"model_init": ..., "args": TrainingArguments(...), "train_dataset": ..., "eval_dataset": ...,
     "compute_metrics": ...,            # optional, as are data_collator, processing_class
     "metric": "accuracy", "higher_is_better": True}   # optional: default the eval loss

Each run: ``transformers.set_seed(seed)``, ``model_init()`` (so every optimizer starts from the seed's weights),
then a ``Trainer`` with ``args`` copied with the run's seed (``seed`` and ``data_seed``: the same sampler order
for every optimizer), ``max_steps``, evaluation every ``steps / evals`` steps, no checkpoints and no reporting, and
``optimizers=`` the registry's optimizer at the run's lr (``args.weight_decay`` translated per optimizer as the
arena does) with the arena's schedule. The metric is ``compute_metrics``' (``eval_<metric>``): the option's, else the
function's ``metric``, else ``args.metric_for_best_model`` (with ``args.greater_is_better`` as its direction), else
the eval loss (lower is better).
Options: ``metric``, ``higher_is_better``, ``steps``, ``evals``, ``name``, ``target``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...integrations.torchvision_nms import install as install_nms
from ...registry import create_optimizer
from ..catalog import call_factory
from ..optimizer_setup import arena_weight_decay, lr_multiplier, run_length_kwargs, ultralytics_only
from ..runner import weights_digest
from . import _digest, workload_task
from .common import Diverged, Recorder, flag, option, positive_int, resolve, run_dir, target_option

STEPS = {"tiny": 20, "quick": 300, "full": 2000}
#: What the function returns beyond the Trainer's own arguments.
OWN_KEYS = {"model_init", "args", "metric", "higher_is_better"}


def hf_task(spec: str, positional: list[str], options: dict[str, Any], budget: str):
    if len(positional) != 2:
        raise ValueError(f"Invalid task: {spec!r} (expected 'hf:pkg.module:function')")
    install_nms()  # the user's function may import transformers, which imports torchvision
    function, source = resolve(spec, positional[0], positional[1])
    if not callable(function):
        raise ValueError(f"Invalid task: {spec!r} ({positional[1]!r} is not callable)")
    made = call_factory(spec, function, budget, "a dict of the Trainer's inputs")
    if not isinstance(made, dict) or not {"model_init", "args", "train_dataset"} <= set(made):
        raise ValueError(f"Invalid task: {spec!r} returned {type(made).__name__} without model_init, args and "
                         "train_dataset (a dict of Trainer.hyperparameter_search's inputs)")
    known = {"metric", "higher_is_better", "steps", "evals", "name", "target"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Invalid task: {spec!r} (unknown options {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))})")
    args = made["args"]

    # the metric and its direction: the spec's, else the function's, else what args say for best-model
    # selection (metric_for_best_model, greater_is_better: the Trainer's own declaration), else the eval loss
    def eval_key(name: str) -> str:  # the key the Trainer's evaluation logs the metric under
        return name if name.startswith("eval_") else f"eval_{name}"

    declared = getattr(args, "metric_for_best_model", None)
    metric = eval_key(str(option(options, "metric", made.get("metric", declared or "loss"))))
    greater = getattr(args, "greater_is_better", None)
    same = declared is not None and metric == eval_key(declared)
    higher = flag(spec, "higher_is_better",
                  option(options, "higher_is_better", made.get("higher_is_better", bool(greater) if same else False)))
    steps = positive_int(spec, "steps",
                         option(options, "steps", args.max_steps if args.max_steps > 0 else STEPS[budget]))
    evals = positive_int(spec, "evals", option(options, "evals", 10))
    target = target_option(spec, options)
    shaping = [getattr(args, k, None) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                 "weight_decay", "max_grad_norm", "bf16", "fp16")]
    fingerprint = _digest(spec, metric, higher, steps, evals, budget, shaping,
                          files=(source, __file__))

    def run(optimizer: str, lr: float, seed: int, batch_size: int, *, device: torch.device,
            heartbeat: Callable[[], None] | None = None, out: Path | None = None) -> Any:
        return _run(made, task.name, metric, higher, steps, max(1, steps // evals), optimizer, lr, seed, batch_size,
                    device=device, heartbeat=heartbeat, out=out, target=target)

    task = workload_task(options.get("name") or f"hf-{positional[1]}", run, framework="hf", metric=metric,
                         higher_is_better=higher,
                         steps=steps, batch_size=args.per_device_train_batch_size, target=target,
                         fingerprint=fingerprint, description=f"Hugging Face Trainer {positional[1]}, {steps} steps, "
                                                              f"metric {metric}")
    return task


def _run(made: dict[str, Any], task_name: str, metric: str, higher: bool, steps: int, eval_every: int,
         optimizer_name: str, lr: float, seed: int, batch_size: int, *, device: torch.device,
         heartbeat: Callable[[], None] | None, out: Path | None, target: float | None) -> Any:
    install_nms()  # transformers' Trainer imports torchvision where it is installed
    from transformers import Trainer, TrainerCallback, set_seed

    ultralytics_only(optimizer_name)
    record = Recorder(device, higher, target, optimizer_name)
    args = dataclasses.replace(
        made["args"], output_dir=str(run_dir(out, "hf", task_name, optimizer_name, lr, seed)), seed=seed,
        data_seed=seed, learning_rate=lr, max_steps=steps, per_device_train_batch_size=batch_size,
        eval_strategy="steps", eval_steps=eval_every, save_strategy="no", report_to=[], logging_steps=1,
        logging_nan_inf_filter=False, disable_tqdm=True, use_cpu=device.type == "cpu")
    set_seed(seed)
    model = made["model_init"]()
    record.digest = weights_digest(model)
    optimizer = create_optimizer(model, optimizer_name, lr=lr, **arena_weight_decay(optimizer_name, args.weight_decay),
                                 **run_length_kwargs(optimizer_name, steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(optimizer_name, steps))

    class Measure(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            record.step_start()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            record.before_optimizer()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            record.step_end(None)
            if heartbeat is not None:
                heartbeat()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                record.step_end_loss(float(logs["loss"]))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            metrics = metrics or {}
            if metric not in metrics:
                raise ValueError(f"Invalid metric: {metric!r} (the evaluation gave {sorted(metrics)}; name one "
                                 "with --metric or the function's 'metric')")
            record.evaluated(state.global_step, float(metrics[metric]), model)

    extra = {k: v for k, v in made.items() if k not in OWN_KEYS}
    trainer = Trainer(model=model, args=args, optimizers=(optimizer, scheduler), callbacks=[Measure()], **extra)
    because = None
    try:
        trainer.train()
        if not record.eval_steps or record.eval_steps[-1] != trainer.state.global_step:
            trainer.evaluate()
    except Diverged as err:
        because = str(err)
    return record.result(trainer.state.global_step, optimizer, model, because)
