"""The arena's built-in tasks: valid for every budget, deterministic per seed, trainable, cheap to evaluate."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from optarena import create_optimizer
from optarena.arena.catalog import BUILTIN_TASKS
from optarena.arena.task import BUDGETS, Task
from optarena.arena.tasks import load_modular_split, make_noisy_quadratic

NAMES = list(BUILTIN_TASKS)
SURFACE_TASKS = {"rosenbrock": (1.0, 1.0), "rastrigin": (0.0, 0.0)}  # and their minima; fixed start, no data


def first_batches(task: Task, seed: int, batch_size: int | None = None, n: int = 3) -> list:
    batches = task.make_batches(torch.Generator().manual_seed(seed), batch_size or task.batch_size)
    return list(itertools.islice(batches, n))


def initial_params(task: Task, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [p.detach().clone() for p in task.make_model().parameters()]


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def evaluate(task: Task, model: torch.nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        value = task.evaluate(model)
    model.train()
    return value


def test_builtin_tasks_in_order() -> None:
    assert NAMES == ["noisy_quadratic", "rosenbrock", "rastrigin", "digits_mlp", "digits_cnn", "char_lm",
                     "modular_add"]


@pytest.mark.parametrize("name", NAMES)
def test_every_budget_gives_a_valid_task(name: str) -> None:
    tasks = {budget: BUILTIN_TASKS[name](budget) for budget in BUDGETS}
    for task in tasks.values():
        assert isinstance(task, Task) and task.name == name
        assert task.description and task.target is not None and task.metric in ("val_loss", "val_accuracy")
        assert task.higher_is_better == (task.metric == "val_accuracy")
        assert 1 <= task.eval_every <= task.steps
    assert tasks["tiny"].steps < tasks["quick"].steps < tasks["full"].steps
    assert BUILTIN_TASKS[name]().steps == tasks["quick"].steps
    with pytest.raises(ValueError, match="budget"):
        BUILTIN_TASKS[name]("huge")


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_start_and_batches(name: str) -> None:
    task = BUILTIN_TASKS[name]("tiny")
    assert same(initial_params(task, 0), initial_params(task, 0))
    torch.manual_seed(1)  # the global generator must not leak into the batches
    batches = first_batches(task, 0)
    torch.manual_seed(2)
    assert same(batches, first_batches(task, 0))
    if name in SURFACE_TASKS:
        assert same(initial_params(task, 0), initial_params(task, 1))
    else:
        assert not same(initial_params(task, 0), initial_params(task, 1))
        assert not same(batches, first_batches(task, 1))


def test_fixed_data_does_not_depend_on_the_global_seed() -> None:
    splits = []
    for seed in (0, 1):
        load_modular_split.cache_clear()
        torch.manual_seed(seed)
        splits.append(load_modular_split())
    assert same(*splits)
    torch.manual_seed(0)
    model = BUILTIN_TASKS["char_lm"]("tiny").make_model()
    values = []
    for seed in (0, 1):  # the text, its split and the validation windows are fixed
        torch.manual_seed(seed)
        values.append(evaluate(BUILTIN_TASKS["char_lm"]("tiny"), model))
    assert values[0] == values[1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch_size", [1, 16, 256])
def test_batches_are_endless_and_fit_any_batch_size(name: str, batch_size: int) -> None:
    task = BUILTIN_TASKS[name]("tiny")
    torch.manual_seed(0)
    model = task.make_model()
    batches = first_batches(task, 0, batch_size, n=12)  # more than an epoch of digits at 256
    assert len(batches) == 12
    for batch in batches[:2] + batches[-1:]:
        value = task.loss(model, batch)
        assert value.ndim == 0 and math.isfinite(value.item())


@pytest.mark.parametrize("name", NAMES)
def test_adamw_lowers_the_loss_on_the_tiny_budget(name: str) -> None:
    task = BUILTIN_TASKS[name]("tiny")
    torch.manual_seed(0)
    model = task.make_model()
    optimizer = create_optimizer(model, "adamw", lr=1e-3, weight_decay=task.weight_decay)
    batches = task.make_batches(torch.Generator().manual_seed(0), task.batch_size)
    fixed = next(batches)
    with torch.no_grad():
        before = task.loss(model, fixed).item()
    for _ in range(task.steps):
        loss = task.loss(model, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = task.loss(model, fixed).item()
    assert after < before


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_is_a_finite_float_and_repeatable(name: str) -> None:
    task = BUILTIN_TASKS[name]("tiny")
    torch.manual_seed(0)
    model = task.make_model()
    first, second = evaluate(task, model), evaluate(task, model)  # eval mode: batch norm statistics stay put
    assert isinstance(first, float) and math.isfinite(first) and first == second
    if task.higher_is_better:
        assert 0.0 <= first <= 1.0


@pytest.mark.parametrize("name", list(SURFACE_TASKS))
def test_surface_tasks_expose_a_consistent_surface_and_position(name: str) -> None:
    task = BUILTIN_TASKS[name]()
    assert task.surface is not None and task.position is not None
    torch.manual_seed(0)
    model = task.make_model()
    x, y = task.position(model)
    assert isinstance(x, float) and isinstance(y, float)
    z = task.surface(torch.tensor(x), torch.tensor(y)).item()
    assert z == pytest.approx(task.loss(model, None).item()) and z == pytest.approx(evaluate(task, model))
    grid = task.surface(*torch.meshgrid(torch.linspace(-2, 2, 5), torch.linspace(-1, 3, 7), indexing="ij"))
    assert grid.shape == (5, 7) and torch.isfinite(grid).all()
    assert task.surface(*map(torch.tensor, SURFACE_TASKS[name])).item() == pytest.approx(0.0, abs=1e-6)
    assert z > task.target


def test_noisy_quadratic_gradient_noise_shrinks_with_batch_size() -> None:
    task = make_noisy_quadratic()
    torch.manual_seed(0)
    model = task.make_model()
    curvatures = 1.0 / torch.arange(1, 101, dtype=torch.float32)  # h_i = 1/i, as documented
    exact = torch.func.grad(lambda theta: 0.5 * (curvatures * theta.square()).sum())(
        model.theta.detach())
    variances = {}
    for batch_size in (16, 64, 256):
        grads = []
        for shift in itertools.islice(task.make_batches(torch.Generator().manual_seed(0), batch_size), 400):
            (grad,) = torch.autograd.grad(task.loss(model, shift), model.theta)
            grads.append(grad)
        grads = torch.stack(grads)
        assert torch.allclose(grads.mean(dim=0), exact, atol=4 * grads.std(dim=0).max().item() / 20)
        variances[batch_size] = grads.var(dim=0)
        # the variance is h_i / B per coordinate, as for a mini-batch of B samples
        ratio = (variances[batch_size] * batch_size / curvatures).mean().item()
        assert ratio == pytest.approx(1.0, rel=0.1)
    assert variances[16].sum() > 3 * variances[64].sum() > 9 * variances[256].sum()
