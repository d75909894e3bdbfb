"""Lightning + optarena: a small regression model trained with Lion, warm-up and decay, and resumed from a checkpoint.

    python examples/lightning_lion.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from optarena.integrations import torchvision_nms

# lightning imports torchvision (through torchmetrics), whose registry wheel next to the CPU torch pin cannot load its
# C++ ops: a pure-PyTorch nms first (README, "torchvision here"); where torchvision's own ops load this does nothing
torchvision_nms.install()

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from optarena.integrations.lightning import optimizer_config  # noqa: E402


class Regressor(L.LightningModule):
    def __init__(self, name: str = "lion", lr: float = 1e-3, **optimizer_kwargs) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 1))
        self.name, self.lr, self.optimizer_kwargs = name, lr, optimizer_kwargs

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        # weight decay on the two Linear weights only; lr warms up over 4 steps, then decays to 0.1× by step 40
        return optimizer_config(self, self.name, lr=self.lr, weight_decay=0.1, schedule={4: 1.0, 40: 0.1},
                                **self.optimizer_kwargs)


def data(batch_size: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True).sin()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(out: Path, epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, default_root_dir=out, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, deterministic=True, **kwargs)


def main(out: Path) -> None:
    L.seed_everything(0)
    model = Regressor()
    trainer(out, epochs=2).fit(model, data())          # checkpoints/…epoch=1….ckpt holds optimizer and scheduler
    checkpoint = next((out / "checkpoints").glob("*.ckpt"))
    L.seed_everything(0)
    resumed = Regressor()
    trainer(out / "resumed", epochs=4).fit(resumed, data(), ckpt_path=checkpoint)   # epochs 3 and 4
    print(f"{type(resumed.optimizers().optimizer).__name__}: loss "
          f"{nn.functional.mse_loss(resumed.net(data().dataset.tensors[0]), data().dataset.tensors[1]):.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
