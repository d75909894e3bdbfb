"""Hugging Face Trainer: optimizer_cls_and_kwargs and the (optimizer, scheduler) helper on a tiny GPT-2 built from a
config, with checkpoint resume (the Trainer reloads optimizer.pt with weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

import optarena  # noqa: E402
from optarena.integrations.huggingface import create_optimizer_and_scheduler, optimizer_cls_and_kwargs  # noqa: E402

MAX_STEPS, SAVE_AT = 6, 3


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (32, 16), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def args(out: Path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=MAX_STEPS,
                             save_steps=SAVE_AT, save_strategy="steps", logging_steps=1, report_to="none",
                             use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, weight_decay=0.1,
                             warmup_steps=2, lr_scheduler_type="linear", disable_tqdm=True)


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def run_and_resume(tmp_path: Path, make_trainer) -> tuple[Trainer, Trainer]:
    """Train MAX_STEPS uninterrupted (saving at SAVE_AT), then again from the SAVE_AT checkpoint in a new Trainer
    with a new model; return both trainers."""
    full = make_trainer(tiny_gpt2(), args(tmp_path / "full"))
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{SAVE_AT}"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)  # what the Trainer does on resume
    assert state["state"]
    resumed = make_trainer(tiny_gpt2(), args(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    return full, resumed


def test_optimizer_cls_and_kwargs_trains_and_resumes(tmp_path: Path) -> None:
    cls_kwargs = optimizer_cls_and_kwargs("lion", lr=1e-3, betas=(0.95, 0.98))
    assert cls_kwargs == (optarena.Lion, {"lr": 1e-3, "betas": (0.95, 0.98)})

    def make(model, training_args):
        return Trainer(model=model, args=training_args, train_dataset=Tokens(), optimizer_cls_and_kwargs=cls_kwargs)

    start = params(tiny_gpt2())
    full, resumed = run_and_resume(tmp_path, make)
    optimizer = unwrap(full.optimizer)
    assert type(optimizer) is optarena.Lion
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.1]  # the Trainer's groups: biases and LayerNorm weights undecayed
    assert all(not torch.equal(a, b) for a, b in zip(start, params(full.model)) if a.ndim >= 2)
    assert type(unwrap(resumed.optimizer)) is optarena.Lion
    for a, b in zip(params(full.model), params(resumed.model)):
        assert torch.equal(a, b)


def test_optimizer_and_scheduler_helper_trains_and_resumes(tmp_path: Path) -> None:
    def make(model, training_args):
        optimizers = create_optimizer_and_scheduler(model, training_args, "adan", MAX_STEPS, lr=2e-3)
        return Trainer(model=model, args=training_args, train_dataset=Tokens(), optimizers=optimizers)

    full, resumed = run_and_resume(tmp_path, make)
    optimizer = unwrap(full.optimizer)
    assert type(optimizer) is optarena.Adan
    assert all(float(s["step"]) == MAX_STEPS for s in optimizer.state.values())
    # linear decay to 0 after 2 warm-up steps: the scheduler came from args
    assert full.lr_scheduler.get_last_lr() == [0.0, 0.0]
    for a, b in zip(params(full.model), params(resumed.model)):
        assert torch.equal(a, b)


def test_helpers_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="Invalid weight_decay: 0.1 here"):
        optimizer_cls_and_kwargs("lion", weight_decay=0.1)
    with pytest.raises(TypeError, match="'lion' does not take the argument 'momentum_x'"):
        optimizer_cls_and_kwargs("lion", momentum_x=0.9)
    with pytest.raises(ValueError, match="Invalid num_training_steps: 0"):
        create_optimizer_and_scheduler(tiny_gpt2(), args(Path("unused")), "lion", 0)
    # the Trainer passes plain tensors (Muon would get the embeddings and the head) and adds a decaying schedule
    with pytest.raises(ValueError, match="Invalid optimizer: 'muon' through optimizer_cls_and_kwargs"):
        optimizer_cls_and_kwargs("muon")
    with pytest.raises(ValueError, match="'schedulefree_adamw' through optimizer_cls_and_kwargs .it is schedule-free"):
        optimizer_cls_and_kwargs("schedulefree_adamw")


@pytest.mark.parametrize("lr", [float("nan"), -1.0, "1e-3"])
def test_optimizer_cls_and_kwargs_checks_lr(lr: object) -> None:
    # torch's SGD takes a NaN lr: the Trainer then trained 6 steps to NaN weights without an error
    with pytest.raises(ValueError, match=r"Invalid lr: (nan|-1.0|'1e-3')"):
        optimizer_cls_and_kwargs("momentum", lr=lr)
