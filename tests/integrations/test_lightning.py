"""Lightning: configure_optimizers from the registry, checkpoint resume, gradient accumulation (Lightning's and
optarena's)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
import lightning_lion as example  # noqa: E402

import optarena  # noqa: E402


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def fit(out: Path, epochs: int, batch_size: int = 8, ckpt_path: Path | None = None, model=None, **kwargs):
    L.seed_everything(0)
    model = model or example.Regressor()
    trainer = example.trainer(out, epochs=epochs, **kwargs)
    trainer.fit(model, example.data(batch_size), ckpt_path=ckpt_path)
    return model, trainer


def test_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example.main(tmp_path)
    assert capsys.readouterr().out.startswith("Lion: loss ")


def test_resume_from_checkpoint_continues_identically(tmp_path: Path) -> None:
    full, trainer = fit(tmp_path / "full", epochs=4)
    opt = trainer.optimizers[0]
    assert type(opt) is optarena.Lion
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(1e-3 * (1 - 0.9 * 28 / 36))

    first_half, _ = fit(tmp_path / "half", epochs=2)
    checkpoint = next((tmp_path / "half" / "checkpoints").glob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)  # tensors and plain types only
    assert saved["optimizer_states"][0]["state"] and saved["lr_schedulers"][0]["last_epoch"] == 16
    resumed, _ = fit(tmp_path / "resumed", epochs=4, ckpt_path=checkpoint)
    for a, b in zip(params(full), params(resumed)):
        assert torch.equal(a, b)


def test_gradient_accumulation_equals_the_full_batch(tmp_path: Path) -> None:
    # Adan on float64: two micro-batches of 4 accumulated = one batch of 8, up to the order of the sums
    def model():
        return example.Regressor("adan").double()

    def as_double(batch_size: int):
        loader = example.data(batch_size)
        x, y = loader.dataset.tensors
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.double(), y.double()),
                                           batch_size=batch_size, shuffle=False)

    results = {}
    runs = [("full", 8, {}, 1), ("lightning", 4, {"accumulate_grad_batches": 2}, 1), ("optarena", 4, {}, 2)]
    for label, batch_size, kwargs, accumulate in runs:
        L.seed_everything(0)
        m = model()
        if accumulate > 1:
            m.optimizer_kwargs = {"accumulate": accumulate}
        trainer = example.trainer(tmp_path / label, epochs=2, **kwargs)
        trainer.fit(m, as_double(batch_size))
        results[label] = (params(m), trainer)
    assert type(results["optarena"][1].optimizers[0]) is optarena.GradientAccumulation
    for label in ("lightning", "optarena"):
        diff = max(float((a - b).abs().max()) for a, b in zip(results["full"][0], results[label][0]))
        assert diff < 1e-12, (label, diff)


def test_accumulated_schedule_steps_once_per_update(tmp_path: Path) -> None:
    from optarena.schedules import piecewise_linear_multiplier

    # 64 samples in batches of 22: 3 batches an epoch, so accumulating 2 updates 6 times in 4 epochs
    model = example.Regressor("lion", accumulate=2)
    _, trainer = fit(tmp_path, epochs=4, batch_size=22, model=model)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 4 * 3 // 2
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 * piecewise_linear_multiplier({4: 1.0, 40: 0.1}, 6))
    assert "_accumulation" not in scheduler.state_dict()  # the checkpoint holds plain types only


@pytest.mark.parametrize("name", ["lion", "schedulefree_adamw"])
@pytest.mark.parametrize(("schedule", "message"), [([(0, 1.0)], r"Invalid schedule: \[\(0, 1.0\)\]"),
                                                   ({0: 1.0, "a": 2.0}, "Invalid step in schedule: 'a'"),
                                                   ({0: float("nan")}, "Invalid multiplier in schedule: nan")])
def test_bad_schedule_is_named(name: str, schedule: object, message: str) -> None:
    # schedule-free's decay check ran first: a list failed with AttributeError, a str step with TypeError from sorted;
    # the others' errors said "points", piecewise_linear's argument, not this function's
    from optarena.integrations.lightning import optimizer_config

    with pytest.raises(ValueError, match=message):
        optimizer_config(torch.nn.Linear(3, 2), name, schedule=schedule)
