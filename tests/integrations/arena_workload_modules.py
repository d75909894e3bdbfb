"""User code for the arena workload tests: a Lightning module and DataModule, and a Hugging Face function returning
Trainer.hyperparameter_search's inputs (a 2-layer GPT-2 from a config on generated text). Each records the metric
it computed itself in LOGGED, so a test can check that the arena stored the framework's own number."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

LOGGED: list[float] = []


def _blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * nn.functional.one_hot(y, 8).float()
    return TensorDataset(x, y)


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.correct = self.seen = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.correct += int((self.net(x).argmax(1) == y).sum())
        self.seen += len(y)

    def on_validation_epoch_end(self) -> None:
        acc = self.correct / self.seen
        LOGGED.append(acc)
        self.log("val_acc", acc)
        self.correct = self.seen = 0

    def configure_optimizers(self):
        raise AssertionError("the arena supplies the optimizer")


class Blobs(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(_blobs(256, 0), batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(_blobs(128, 1), batch_size=64)


class _Text(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int, length: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, 8, (n, 1), generator=g)
        self.ids = (starts + torch.arange(length)) % 8  # counting mod 8: learnable next tokens

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(budget: str = "tiny") -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    def compute_metrics(prediction) -> dict[str, float]:
        logits, labels = prediction.predictions, prediction.label_ids
        acc = float((logits[:, :-1].argmax(-1) == labels[:, 1:]).mean())
        LOGGED.append(acc)
        return {"next_token_acc": acc}

    config = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return {"model_init": lambda: GPT2LMHeadModel(config),
            "args": TrainingArguments(output_dir="unused", per_device_train_batch_size=8, per_device_eval_batch_size=32,
                                      max_steps=12, weight_decay=0.0),
            "train_dataset": _Text(128, 0), "eval_dataset": _Text(32, 1), "compute_metrics": compute_metrics,
            "metric": "next_token_acc", "higher_is_better": True}


def tiny_gpt2_declared(budget: str = "tiny") -> dict:
    """tiny_gpt2 with its metric declared the Trainer's way only: ``args.metric_for_best_model`` (which makes
    ``args.greater_is_better`` true), no ``metric`` or ``higher_is_better`` keys."""
    from transformers import TrainingArguments

    made = tiny_gpt2(budget)
    del made["metric"], made["higher_is_better"]
    made["args"] = TrainingArguments(output_dir="unused", per_device_train_batch_size=8, max_steps=12,
                                     metric_for_best_model="next_token_acc")
    return made
