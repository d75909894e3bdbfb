"""The arena's built-in tasks: small, CPU-fast workloads, each chosen to probe a claim made about optimizers.

- ``noisy_quadratic``: the noisy quadratic model, where batch size decides which optimizer wins.
- ``rosenbrock`` and ``rastrigin``: 2-D test functions whose trajectories can be drawn (ill conditioning, local minima).
- ``digits_mlp`` and ``digits_cnn``: scikit-learn's digits, with an MLP and with YOLO-style Conv-BN-SiLU blocks.
- ``char_lm``: a tiny causal transformer language model on the documentation text shipped with Python.
- ``modular_add``: a grokking setup, (a + b) mod p, where weight decay decides whether the model generalises.

Everything is bundled (no downloads) and the fixed data (splits, text) never depends on the run seed: the seed
only sets the initial weights (``make_model`` runs after ``torch.manual_seed(seed)``) and the batch order (the
generator passed to ``make_batches``). Each factory takes a budget from :data:`~optarena.arena.task.BUDGETS`;
``quick`` runs take about a second on one CPU thread, ``tiny`` ones a fraction of that.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..demo import load_digits_split, make_mlp
from .task import BUDGETS, Task

Batch = tuple[Tensor, Tensor]


def _pick(budget: str, tiny: int, quick: int, full: int) -> int:
    """The value for ``budget`` (steps, usually)."""
    if budget not in BUDGETS:
        raise ValueError(f"Invalid budget: {budget!r} (expected one of {', '.join(BUDGETS)})")
    return {"tiny": tiny, "quick": quick, "full": full}[budget]


def _classification_loss(model: nn.Module, batch: Batch) -> Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _device(model: nn.Module) -> torch.device:
    """Where the runner put the model: fixed data captured by a task moves there when used."""
    return next(model.parameters()).device


def _accuracy(x: Tensor, y: Tensor) -> Callable[[nn.Module], float]:
    """``evaluate`` for a classifier: accuracy on the fixed validation set ``(x, y)``."""
    def evaluate(model: nn.Module) -> float:
        device = _device(model)
        return (model(x.to(device)).argmax(dim=1) == y.to(device)).float().mean().item()
    return evaluate


def _sample_epochs(x: Tensor, y: Tensor, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
    """Endless epochs, each a fresh permutation from ``generator``; the incomplete last batch is dropped
    (unless it is the only one), so every step sees the same batch size."""
    n = len(x)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, max(n - batch_size, 0) + 1, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


# --- noisy quadratic ------------------------------------------------------------------------------------------------

_NQM_DIM = 100


class _Vector(nn.Module):
    """A model that is just its parameter vector (the quadratic's θ, the 2-D point)."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(init.clone())


def make_noisy_quadratic(budget: str = "quick") -> Task:
    """Noisy quadratic model (Zhang et al. 2019, "Which algorithmic choices matter at which batch sizes?").

    The loss of one batch is ``½ Σ h_i (θ_i - c_i)²`` with curvatures ``h_i = 1/i`` (i = 1..100) and a random
    shift ``c_i ~ N(0, 1 / (h_i B))``: the gradient ``h (θ - c)`` is the exact one plus noise of variance
    ``h_i / B``, as for a mini-batch of size ``B``. A batch is one draw of ``c`` from the generator. The metric is
    the noise-free excess loss ``½ Σ h_i θ_i²`` (0 at the optimum); θ starts at a random point drawn in
    ``make_model``.
    """
    h = 1.0 / torch.arange(1, _NQM_DIM + 1, dtype=torch.float32)

    def make_batches(generator: torch.Generator, batch_size: int) -> Iterator[Tensor]:
        scale = (h * batch_size).rsqrt()
        while True:
            yield torch.randn(_NQM_DIM, generator=generator) * scale

    def loss(model: nn.Module, shift: Tensor) -> Tensor:
        return 0.5 * (h.to(model.theta.device) * (model.theta - shift).square()).sum()

    def evaluate(model: nn.Module) -> float:
        return 0.5 * (h.to(model.theta.device) * model.theta.square()).sum().item()

    return Task(
        name="noisy_quadratic", make_model=lambda: _Vector(torch.randn(_NQM_DIM)), make_batches=make_batches,
        loss=loss, evaluate=evaluate, metric="val_loss", higher_is_better=False, target=0.02,
        steps=_pick(budget, 50, 500, 4000), batch_size=64, batch_sizes=(16, 64, 256),
        description="Noisy quadratic (Zhang et al. 2019), 100-D, curvatures 1/i, gradient noise ~ 1/batch: "
                    "which optimizer wins at which batch size (e.g. 'Lion needs batch >= 64').")


# --- 2-D test functions ---------------------------------------------------------------------------------------------

def rosenbrock_surface(x: Tensor, y: Tensor) -> Tensor:
    """Rosenbrock's banana, minimum 0 at (1, 1)."""
    return (1 - x).square() + 100 * (y - x.square()).square()


def rastrigin_surface(x: Tensor, y: Tensor) -> Tensor:
    """Rastrigin's egg box, global minimum 0 at (0, 0), a local minimum near every integer point."""
    return 20 + x.square() + y.square() - 10 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y))


def _surface_task(name: str, surface: Callable[[Tensor, Tensor], Tensor], start: tuple[float, float],
                  target: float, steps: int, description: str) -> Task:
    """A 2-D problem: the model is one 2-element parameter starting at ``start`` (the same for every seed; there
    is no data, so the batches are dummies and the runs are deterministic)."""

    def loss(model: nn.Module, _batch: Any) -> Tensor:
        return surface(model.theta[0], model.theta[1])

    def position(model: nn.Module) -> tuple[float, float]:
        x, y = model.theta.tolist()
        return x, y

    return Task(
        name=name, make_model=lambda: _Vector(torch.tensor(start)), make_batches=lambda g, b: itertools.repeat(None),
        loss=loss, evaluate=lambda model: loss(model, None).item(), metric="val_loss", higher_is_better=False,
        target=target, steps=steps, batch_size=1, batched=False, surface=surface, position=position,
        description=description)


def make_rosenbrock(budget: str = "quick") -> Task:
    """2-D Rosenbrock from (-1.5, 2): a narrow curved valley (ill conditioning, momentum, adaptivity)."""
    return _surface_task("rosenbrock", rosenbrock_surface, (-1.5, 2.0), 1e-2, _pick(budget, 50, 600, 5000),
                         "Rosenbrock 2-D from (-1.5, 2): following a narrow curved valley (ill conditioning); "
                         "trajectories are drawn.")


def make_rastrigin(budget: str = "quick") -> Task:
    """2-D Rastrigin from (-2.3, 2.7): many local minima between the start and the global one.

    The target (1.0, i.e. within ~0.07 of the origin) is a trap test, not a race: in our sweeps (AdamW lr 1e-3 to
    0.3, Lion 1e-4 to 0.1, SGD with momentum) adaptive optimizers stop in the nearest local minimum (f ≈ 13 at
    (-2, 3)); reaching the target would back a claim of escaping local minima.
    """
    return _surface_task("rastrigin", rastrigin_surface, (-2.3, 2.7), 1.0, _pick(budget, 50, 500, 4000),
                         "Rastrigin 2-D from (-2.3, 2.7): local minima everywhere; does the optimizer escape the "
                         "nearest one (claims of escaping sharp minima)? Trajectories are drawn.")


# --- digits ---------------------------------------------------------------------------------------------------------

def _digits_task(name: str, make_model: Callable[[], nn.Module], shape: tuple[int, ...], steps: int,
                 description: str) -> Task:
    """scikit-learn's digits (fixed split of :func:`~optarena.demo.load_digits_split`), images viewed as
    ``shape``; metric: validation accuracy."""
    x_train, y_train, x_val, y_val = load_digits_split(0)
    x_train, x_val = x_train.reshape(-1, *shape), x_val.reshape(-1, *shape)
    return Task(
        name=name, make_model=make_model,
        make_batches=lambda g, b: _sample_epochs(x_train, y_train, g, b),
        loss=_classification_loss, evaluate=_accuracy(x_val, y_val), metric="val_accuracy", higher_is_better=True,
        target=0.95, steps=steps, batch_size=64, train_examples=len(x_train), description=description)


def make_digits_mlp(budget: str = "quick") -> Task:
    """MLP 64-128-128-10 on scikit-learn's 8×8 digits (the demo's model)."""
    return _digits_task("digits_mlp", make_mlp, (64,), _pick(budget, 20, 600, 4000),
                        "MLP 64-128-128-10 on scikit-learn's 8x8 digits: the everyday small-network baseline.")


def conv_bn_silu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """The YOLO building block: 3×3 convolution without bias, batch norm, SiLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


def make_digits_cnn_model(width: int = 16) -> nn.Module:
    return nn.Sequential(conv_bn_silu(1, width), conv_bn_silu(width, 2 * width, stride=2),
                         conv_bn_silu(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, 10))


def make_digits_cnn(budget: str = "quick") -> Task:
    """Small CNN of Conv-BN-SiLU blocks (YOLOv8's block) on the digits as 1×8×8 images."""
    return _digits_task("digits_cnn", make_digits_cnn_model, (1, 8, 8), _pick(budget, 10, 300, 2000),
                        "CNN of YOLO Conv-BN-SiLU blocks on the digits as 1x8x8 images: convolutions and batch "
                        "norm, where the Lion-in-YOLOv8 claims were made.")


# --- transformers ---------------------------------------------------------------------------------------------------

class CausalBlock(nn.Module):
    """A pre-norm transformer block: causal multi-head self-attention, then a GELU MLP, each residual. The
    attention is written out (one matmul for the scores, a mask, softmax): on a CPU it is ~20 % faster than
    ``scaled_dot_product_attention`` for a context of 3 tokens and as fast for 32."""

    def __init__(self, d_model: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.register_buffer("mask", torch.full((context, context), -math.inf).triu(1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5 + self.mask[:t, :t]
        x = x + self.out((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """A decoder-only (causal) transformer: token and learned position embeddings, :class:`CausalBlock` layers, a
    final norm and a linear head; ``(batch, tokens) -> (batch, tokens, vocab)`` logits.

    Embeddings start small (std 0.05, not ``nn.Embedding``'s 1): a large initial weight norm is what delays
    grokking for thousands of steps (Liu et al. 2023, "Omnigrok"), more than a quick run has."""

    def __init__(self, vocab: int, context: int, d_model: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight, std=0.05)
        self.pos = nn.Parameter(0.02 * torch.randn(context, d_model))
        self.blocks = nn.Sequential(*(CausalBlock(d_model, heads, context) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.blocks(self.embed(tokens) + self.pos[:tokens.shape[1]])
        return self.head(self.norm(h))


_CHAR_CONTEXT = 32
_CHAR_VAL_WINDOWS = 32


@functools.lru_cache(maxsize=1)
def load_char_text() -> tuple[Tensor, Tensor, str]:
    """The English documentation strings bundled with Python (``pydoc_data.topics``, ~465k characters, in sorted
    key order) as character ids: the first 90 % to train on, the last 10 % to validate on, and the vocabulary."""
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))
    return ids[:split], ids[split:], vocab


def make_char_lm(budget: str = "quick") -> Task:
    """Character-level causal transformer LM (d_model 64, 2 layers, 4 heads, context 32) on Python's docs.

    Trains on random windows of the first 90 % of the text; validates on 32 fixed, evenly spaced windows of the
    last 10 % (1,024 characters: cheap enough to evaluate 20 times a run). The metric is nats per character
    (bits = nats / ln 2). Character frequencies alone score 3.25; AdamW at lr 1e-3 reaches ~2.6 in the quick
    budget's 120 steps.
    """
    train, val, vocab = load_char_text()
    offsets = torch.arange(_CHAR_CONTEXT + 1)
    starts = torch.linspace(0, len(val) - _CHAR_CONTEXT - 1, _CHAR_VAL_WINDOWS).long()
    val_windows = val[starts[:, None] + offsets]

    def make_batches(generator: torch.Generator, batch_size: int) -> Iterator[Tensor]:
        while True:
            starts = torch.randint(0, len(train) - _CHAR_CONTEXT, (batch_size,), generator=generator)
            yield train[starts[:, None] + offsets]

    def loss(model: nn.Module, windows: Tensor) -> Tensor:
        logits = model(windows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))

    return Task(
        name="char_lm", make_model=lambda: TinyTransformer(len(vocab), _CHAR_CONTEXT), make_batches=make_batches,
        loss=loss, evaluate=lambda model: loss(model, val_windows.to(_device(model))).item(), metric="val_loss",
        higher_is_better=False, target=2.7, steps=_pick(budget, 10, 120, 1000), batch_size=16, weight_decay=0.1,
        description="Character-level transformer LM (2 layers, d 64) on Python's bundled docs, val loss in "
                    "nats/char: attention, embeddings and layer norm, as in the LLM claims.")


_MOD_P = 31


@functools.lru_cache(maxsize=1)
def load_modular_split(p: int = _MOD_P, train_fraction: float = 0.5) -> tuple[Tensor, ...]:
    """All pairs ``(a, b)`` as token rows ``[a, b, =]`` (``=`` is token ``p``) with labels ``(a + b) mod p``, split
    at random once (generator seed 0, independent of the run seed) into train and validation."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = (a + b) % p
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_train = int(train_fraction * len(x))
    train, val = order[:n_train], order[n_train:]
    return x[train], y[train], x[val], y[val]


class _LastToken(nn.Module):
    """Classify from the transformer's output at the last position (the ``=`` token)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, tokens: Tensor) -> Tensor:
        return self.body(tokens)[:, -1]


def make_modular_add(budget: str = "quick") -> Task:
    """Grokking (Power et al. 2022): (a + b) mod 31 from half of all pairs, a 1-layer transformer (d_model 32).

    Weight decay is 10 at AdamW scale, ten times the usual grokking value, so that decay acts within a short run
    (time constant ``1 / (lr · wd)`` = 100 steps at lr 1e-3). Measured with AdamW and the arena's cosine schedule
    over the quick budget: at lr 3e-3 the model generalises (validation accuracy 0.78-1.0 over seeds 0-2); with
    decay 3 it only memorises the training pairs and stays at ~0.45 (what commutativity gives: (b, a) is often in
    the training half). At lr 1e-3 grokking needs more steps than the quick budget has (~0.3 at its end).
    """
    x_train, y_train, x_val, y_val = load_modular_split()
    return Task(
        name="modular_add", make_model=lambda: _LastToken(TinyTransformer(_MOD_P + 1, 3, 32, layers=1)),
        make_batches=lambda g, b: _sample_epochs(x_train, y_train, g, b), loss=_classification_loss,
        evaluate=_accuracy(x_val, y_val), metric="val_accuracy", higher_is_better=True, target=0.75,
        steps=_pick(budget, 10, 300, 3000), batch_size=256, train_examples=len(x_train), weight_decay=10.0,
        description=f"Grokking (Power et al. 2022): (a + b) mod {_MOD_P} from half the pairs, 1-layer transformer, "
                    "AdamW decay 10: without strong decoupled weight decay it memorises and does not generalise.")
