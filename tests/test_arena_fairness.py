"""The arena's fairness, run by run: every optimizer gets the same start, the same batches and memory measured from
the same level (earlier runs' garbage charged to no run), and the same data in every worker process."""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from optarena.arena import Task, load_task, runner, train_once
from optarena.arena.workloads import shapes
from optarena.arena.workloads import ultralytics as ultralytics_workload


def _regression_from_global_generators() -> Task:
    """Initial weights from NumPy's global generator and the data order from Python's ``random``: what many user
    codebases do."""
    data = torch.arange(400.0).view(100, 4) / 400

    def make_model() -> nn.Module:
        model = nn.Linear(4, 1)
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(np.random.randn(1, 4)))
        return model

    def make_batches(generator: torch.Generator, batch_size: int):
        while True:
            x = data[random.sample(range(100), batch_size)]
            yield x, x.sum(1, keepdim=True)

    return Task("global_generators", make_model, make_batches, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
                lambda m: 0.0, steps=3, batch_size=8)


def test_a_seed_gives_every_optimizer_the_same_start_and_batches_from_numpy_and_random() -> None:
    task = _regression_from_global_generators()
    adamw, lion = train_once(task, "adamw", 1e-3, 0), train_once(task, "lion", 1e-4, 0)
    assert adamw.init_digest == lion.init_digest
    assert adamw.train_loss[0] == lion.train_loss[0]  # the first step's loss: same weights, same batch
    assert train_once(task, "adamw", 1e-3, 1).init_digest != adamw.init_digest  # the seed does change them


def test_the_memory_baseline_leaves_out_earlier_runs_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage of an earlier run (Muon's leave reference cycles) freed during a run was subtracted from its peak
    on CUDA: the baseline must be taken after it is collected."""
    class Garbage:
        pass

    cycle = Garbage()
    cycle.self = cycle
    alive = weakref.ref(cycle)
    del cycle
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100 * 2**20 if alive() else 0)
    gc.disable()
    try:
        memory = runner._PeakMemory(torch.device("cuda"))
    finally:
        gc.enable()
    assert memory.baseline == 0


_FIRST_RUNS = """
import json, torch
from torch import nn
from optarena.arena import Task, train_once
task = Task("linear16", lambda: nn.Linear(16, 16), lambda g, b: iter(lambda: torch.randn(b, 16, generator=g), None),
            lambda m, x: m(x).square().mean(), lambda m: 0.0, steps=4, batch_size=8)
runs = [train_once(task, name, 1e-3, seed) for name, seed in (("adamw", 0), ("adamw", 1), ("adamw", 0), ("lion", 0))]
print(json.dumps([(run.peak_memory_mb, run.train_loss) for run in runs]))
"""


def test_a_processs_first_run_is_charged_no_one_time_allocations() -> None:
    """In a fresh process (a worker), the first run imported dynamo (torch's first optimizer does: 87 MB against
    0.01 for the same run after it) and paged in library code: its peak memory must match the later runs', and
    the warm-up that takes those allocations must leave the run itself unchanged."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak memory on CPU is measured on Linux only")
    done = subprocess.run([sys.executable, "-c", _FIRST_RUNS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (first, first_loss), (second, _), (again, again_loss), (first_lion, _) = json.loads(done.stdout)
    assert first - max(second, again) < 1.0  # MB; a linear layer's own peak is ~0.01
    assert first_lion - again < 1.0  # an optimizer's first run, after another's
    assert first_loss == again_loss  # the warm-up left the generators as they were


def test_yolo_shapes_loads_before_its_data_exists_with_a_fingerprint_that_generating_it_keeps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PIL")  # the generator writes PNGs
    monkeypatch.setenv("OPTARENA_CACHE", str(tmp_path))
    before = load_task("yolo_shapes", "tiny")  # a fresh machine: the data is made by the first run
    assert list(tmp_path.iterdir()) == []
    sizes = shapes.SIZES["tiny"]
    shapes.dataset(sizes["train"], sizes["val"], sizes["size"])
    assert load_task("yolo_shapes", "tiny").fingerprint == before.fingerprint


def test_an_ultralytics_run_imports_ultralytics_before_its_memory_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    order = []

    class Stop(Exception):
        pass

    def trainer_class():
        order.append("import")

        def trainer(**kwargs):
            raise Stop

        return trainer

    monkeypatch.setattr(ultralytics_workload, "_trainer_class", trainer_class)
    monkeypatch.setattr(ultralytics_workload, "_PeakMemory", lambda device: order.append("baseline"))
    with pytest.raises(Stop):
        ultralytics_workload.run("yolov8n.yaml", "data.yaml", {}, "t", "adamw", 1e-3, 0, 8,
                                 device=torch.device("cpu"))
    assert order == ["import", "baseline"]


def test_data_a_task_draws_at_load_is_the_same_in_every_process(tmp_path: Path) -> None:
    """A task file that draws its data set at load from the global generators: each worker process loads it anew
    (Python's ``random`` is reseeded from the OS in a forked worker, NumPy's differs between machines), so every
    load must draw the same data, and leave the caller's generators where they were."""
    (tmp_path / "drawn_at_load.py").write_text(
        "import random\nimport numpy as np\nimport torch\nfrom torch import nn\nfrom optarena.arena import Task\n\n"
        "def make_task():\n"
        "    data = (random.random(), float(np.random.rand()), float(torch.rand(())))\n"
        "    return Task('drawn_at_load', lambda: nn.Linear(1, 1), lambda g, b: iter(()), lambda m, b: 0,\n"
        "                lambda m: sum(data))\n")
    spec = f"{tmp_path / 'drawn_at_load.py'}:make_task"
    loads = []
    for process_state in (1, 2):
        random.seed(process_state)
        np.random.seed(process_state)
        torch.manual_seed(process_state)
        loads.append(load_task(spec).evaluate(None))
        assert (random.random(), np.random.rand()) == (random.Random(process_state).random(),
                                                       np.random.RandomState(process_state).rand())
    assert loads[0] == loads[1]
