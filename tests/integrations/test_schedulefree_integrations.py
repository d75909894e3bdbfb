"""The integrations with schedule-free optimizers: train()/eval() driven, or a clear refusal."""

from __future__ import annotations

import pytest
from torch import nn

schedulefree = pytest.importorskip("schedulefree")


def test_integrations_refuse_what_they_cannot_drive() -> None:
    lightning = pytest.importorskip("optarena.integrations.lightning")
    with pytest.raises(ValueError, match="Invalid schedule"):
        lightning.optimizer_config(nn.Linear(3, 2), "schedulefree_adamw", schedule={10: 1.0, 100: 0.1})
    with pytest.raises(ValueError, match="Invalid schedule"):  # a dip is a decay too
        lightning.optimizer_config(nn.Linear(3, 2), "schedulefree_adamw", schedule={0: 1.0, 50: 0.1, 100: 1.0})
    config = lightning.optimizer_config(nn.Linear(3, 2), "schedulefree_adamw", schedule={10: 1.0})
    callback, trainer = lightning.ScheduleFreeModes(), type("T", (), {"optimizers": [config["optimizer"]]})()
    callback.on_train_batch_start(trainer, None, None, 0)
    assert config["optimizer"].param_groups[0]["train_mode"]
    callback.on_validation_epoch_start(trainer, None)
    assert not config["optimizer"].param_groups[0]["train_mode"]


def test_huggingface_refuses_a_decaying_scheduler(tmp_path) -> None:
    hf = pytest.importorskip("optarena.integrations.huggingface")
    from transformers import TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="linear", report_to=[])
    with pytest.raises(ValueError, match="constant_with_warmup"):
        hf.create_optimizer_and_scheduler(nn.Linear(3, 2), args, "schedulefree_adamw", 10)
    args = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="constant_with_warmup", report_to=[])
    opt, _ = hf.create_optimizer_and_scheduler(nn.Linear(3, 2), args, "schedulefree_adamw", 10)
    assert isinstance(opt, schedulefree.AdamWScheduleFree)


def test_ultralytics_refuses_schedulefree() -> None:
    integration = pytest.importorskip("optarena.integrations.ultralytics")
    with pytest.raises(ValueError, match="schedule-free"):
        integration.build_optimizer(object(), nn.Linear(3, 2), "schedulefree_adamw")
