"""The user's own training as an arena workload: a :class:`~optarena.arena.Task` whose ``run`` trains through the
user's framework instead of the runner's loop.

Specs (``--task`` or ``--tasks``; segments with ``=`` are options, their values read as YAML)::

    ultralytics:MODEL.yaml:DATA.yaml[:key=value...]         ultralytics' detection trainer (any train argument)
    lightning:pkg.module:ModuleClass[:DataModuleClass][:key=value...]
    lightning:pkg.module:factory[:key=value...]             the factory returns a LightningWorkload
    hf:pkg.module:function[:key=value...]                   returns Trainer.hyperparameter_search's inputs

The framework is imported only when a run starts, so loading a spec (in the supervisor, and to list tasks) is cheap.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..task import Task

PREFIXES = ("ultralytics", "lightning", "hf")
#: ultralytics epochs per budget when the spec gives none.
ULTRALYTICS_EPOCHS = {"tiny": 1, "quick": 10, "full": 50}


def is_workload(spec: str) -> bool:
    return spec.partition(":")[0] in PREFIXES and ":" in spec


def split_spec(spec: str) -> tuple[str, list[str], dict[str, Any]]:
    """``(prefix, positional segments, options)`` of a workload spec."""
    prefix, *parts = spec.split(":")
    positional = [p for p in parts if "=" not in p]
    options: dict[str, Any] = {}
    for part in parts:
        if "=" in part:
            key, _, value = part.partition("=")
            if not key.strip():
                raise ValueError(f"Invalid task: {spec!r} (option {part!r} has no name)")
            options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return prefix, positional, options


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "workload"


def _digest(*parts: Any, files: tuple[str | Path | None, ...] = ()) -> str:
    """The workload's fingerprint: its spec, options and budget, and the bytes of the files it reads."""
    digest = hashlib.sha256(repr(parts).encode())
    for file in files:
        try:
            digest.update(Path(file).read_bytes())
        except (OSError, TypeError):  # a name ultralytics resolves itself (yolov8n.yaml) or no file
            digest.update(str(file).encode())
    return digest.hexdigest()[:12]


def _unused(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a workload trains through its own run(); the runner's loop never calls this")


def workload_task(name: str, run: Callable[..., Any], *, metric: str, higher_is_better: bool, steps: int,
                  batch_size: int, description: str, target: float | None = None, batch_sizes: tuple[int, ...] = (),
                  fingerprint: str, schedule: str = "", framework: str = "", batch_size_owner: str = "") -> Task:
    """A :class:`Task` that the runner hands to ``run`` whole."""
    task = Task(name=_safe_name(name), make_model=_unused, make_batches=_unused, loss=_unused, evaluate=_unused,
                metric=metric, higher_is_better=higher_is_better, target=target, steps=steps,
                batch_size=batch_size, batch_sizes=batch_sizes, description=description, run=run, schedule=schedule,
                framework=framework, batch_size_owner=batch_size_owner)
    task.fingerprint = fingerprint
    return task


def _source(module_name: str) -> str:
    return str(Path(inspect.getsourcefile(inspect.getmodule(_source)) or "").parent / f"{module_name}.py")


def _check_data(data: str, spec: str) -> None:
    """Refuse, before anything runs, a data.yaml that ultralytics could not find either: not a file here, not a URL,
    and not one of the dataset yamls ultralytics ships (it looks for a name under its package folder, as here)."""
    if Path(data).is_file() or "://" in data:
        return
    found = importlib.util.find_spec("ultralytics")
    if found is None or not found.submodule_search_locations:
        return  # without ultralytics nothing can tell; its import fails in the run and is recorded there
    root = Path(next(iter(found.submodule_search_locations)))
    if glob.glob(str(root / "**" / glob.escape(data)), recursive=True):
        return
    raise ValueError(f"Invalid task: {spec or data!r} (data {data!r} is no file here, nor a dataset that "
                     "ultralytics ships)")


def ultralytics_task(model: str, data: str, options: dict[str, Any], budget: str, name: str | None = None,
                     spec: str = "", generated_by: str | None = None) -> Task:
    """A Task that trains ``model`` (a yaml, or weights) on ``data`` with ultralytics' detection trainer.
    ``generated_by``: the module (in this package) whose code writes ``data`` on the first run (``shapes``); such
    data may not exist yet, and it is fingerprinted by its folder's name and that code rather than its bytes, so
    that generating it changes no fingerprint."""
    from .ultralytics import ARENA_ARGS

    clash = sorted(set(options) & (ARENA_ARGS - {"model", "data", "name"}))  # name: the task's
    if clash:
        raise ValueError(f"Invalid task: {spec or model!r} (the arena sets {', '.join(clash)} for every run)")
    if generated_by is None:
        _check_data(data, spec)
    options = dict(options)
    from .common import target_option  # here: .common imports the runner, which loading a task does not need

    target = target_option(spec or model, options)
    options.pop("target", None)
    task_name = options.pop("name", None) or name or f"yolo-{Path(model).stem}-{Path(data).parent.name or 'data'}"
    options.setdefault("epochs", ULTRALYTICS_EPOCHS[budget])
    batch = options.pop("batch", 16)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"Invalid batch: {batch!r} (a positive integer; ultralytics' auto-batch would differ per "
                         "optimizer)")
    data_path = str(Path(data).resolve()) if Path(data).is_file() else data
    model_path = str(Path(model).resolve()) if Path(model).is_file() else model
    data_files = (data_path,) if generated_by is None else (_source(generated_by),)
    fingerprint = _digest("ultralytics", Path(model).name, Path(data).name, sorted(options.items()), batch, target,
                          budget, *([Path(data).parent.name] if generated_by else []),
                          files=(model_path, *data_files, _source("ultralytics")))

    def run(optimizer: str, lr: float, seed: int, batch_size: int, **kwargs: Any) -> Any:
        from .ultralytics import run as run_ultralytics

        return run_ultralytics(model_path, data_path, options, task.name, optimizer, lr, seed, batch_size,
                               target=target, **kwargs)

    task = workload_task(task_name, run, metric="val_mAP50-95", higher_is_better=True, steps=options["epochs"],
                         batch_size=batch, target=target, fingerprint=fingerprint,
                         framework="ultralytics",
                         schedule="ultralytics' own warm-up (warmup_epochs, bias warm-up from 0) and linear decay to "
                                  "lrf, the same for every optimizer but Amos (lrf=1.0: it decays its lr itself)",
                         description=f"ultralytics {Path(model).name} on {data}, {options['epochs']} epochs "
                                     "(steps = epochs)")
    return task


def load_workload(spec: str, budget: str) -> Task:
    """The Task for a workload spec (see the module's docstring)."""
    prefix, positional, options = split_spec(spec)
    if prefix == "ultralytics":
        if len(positional) != 2:
            raise ValueError(f"Invalid task: {spec!r} (expected 'ultralytics:MODEL.yaml:DATA.yaml[:key=value...]')")
        return ultralytics_task(positional[0], positional[1], options, budget, spec=spec)
    if prefix == "lightning":
        from .lightning import lightning_task

        return lightning_task(spec, positional, options, budget)
    from .huggingface import hf_task

    return hf_task(spec, positional, options, budget)


__all__ = ["PREFIXES", "is_workload", "load_workload", "split_spec", "ultralytics_task", "workload_task"]
