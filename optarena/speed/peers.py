"""Other libraries' optimizers that ``optarena speed`` times beside optarena's, where installed (none is a
dependency; the ``peers`` extra pins the versions measured; README, "Speed"). A peer that is not installed, or lacks
the algorithm, is reported with the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from types import ModuleType

import torch
from torch import Tensor

from .candidate import Candidate, Unavailable, step_bytes

Build = Callable[[ModuleType], Callable[[list[Tensor]], torch.optim.Optimizer] | str]


def _adamw8bit_bytes() -> int:
    return step_bytes("adamw") - 12  # each 8-bit buffer moves 2 bytes instead of fp32's 8


def _heavyball_lion(hb: ModuleType) -> Callable[[list[Tensor]], torch.optim.Optimizer] | str:
    cls = next((getattr(hb, n) for n in ("Lion", "ForeachLion") if hasattr(hb, n)), None)
    if cls is None:  # 3.2 has none; its sign-based SignLaProp is LaProp through a sign, another rule
        return f"heavyball {metadata.version('heavyball')} has no Lion optimizer"
    return lambda ps: cls(ps, lr=1e-4, weight_decay=0.01)


#: (label, registry algorithm, import name, pip requirement, builder, bytes per parameter, compiles): ``builder``
#: takes the imported module and returns the optimizer's constructor, or why there is none. heavyball (3.2: its
#: elementwise ops are torch.compile'd, max-autotune) and torchao (``torch.compile`` per parameter) compile on the
#: first step; heavyball's step sets ``p.grad = None``, which the timing handles (``measure.run_layout``).
PEERS: list[tuple[str, str, str, str, Build, Callable[[], int], bool]] = [
    ("lion-pytorch Lion", "lion", "lion_pytorch", "lion-pytorch",
     lambda m: lambda ps: m.Lion(ps, lr=1e-4, weight_decay=0.01), lambda: step_bytes("lion"), False),
    ("pytorch-optimizer Lion", "lion", "pytorch_optimizer", "pytorch-optimizer",
     lambda m: lambda ps: m.Lion(ps, lr=1e-4, weight_decay=0.01), lambda: step_bytes("lion"), False),
    ("pytorch-optimizer Adan", "adan", "pytorch_optimizer", "pytorch-optimizer",
     lambda m: lambda ps: m.Adan(ps, lr=1e-3, weight_decay=0.02), lambda: step_bytes("adan"), False),
    ("bitsandbytes Lion8bit", "lion", "bitsandbytes", "bitsandbytes",
     lambda m: lambda ps: m.optim.Lion8bit(ps, lr=1e-4, weight_decay=0.01), lambda: step_bytes("lion", "fused-int8"),
     False),
    ("bitsandbytes Lion", "lion", "bitsandbytes", "bitsandbytes",
     lambda m: lambda ps: m.optim.Lion(ps, lr=1e-4, weight_decay=0.01), lambda: step_bytes("lion"), False),
    ("bitsandbytes AdamW8bit", "adamw", "bitsandbytes", "bitsandbytes",
     lambda m: lambda ps: m.optim.AdamW8bit(ps, lr=1e-3, weight_decay=0.01), _adamw8bit_bytes, False),
    ("torch-optimi Lion", "lion", "optimi", "torch-optimi",
     lambda m: lambda ps: m.Lion(ps, lr=1e-4, weight_decay=0.01), lambda: step_bytes("lion"), False),
    ("torch-optimi AdamW", "adamw", "optimi", "torch-optimi",
     lambda m: lambda ps: m.AdamW(ps, lr=1e-3, weight_decay=0.01), lambda: step_bytes("adamw"), False),
    ("heavyball Lion", "lion", "heavyball", "heavyball==3.2.*", _heavyball_lion, lambda: step_bytes("lion"), True),
    ("heavyball AdamW", "adamw", "heavyball", "heavyball==3.2.*",
     lambda m: lambda ps: m.AdamW(ps, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01), lambda: step_bytes("adamw"),
     True),
    # heavyball's own default compiles each elementwise op; compile_step=True compiles the whole step (1x16M: 17.6
    # against 33.9 ms, benchmarks/NOTES.md "8-bit state", Peers)
    ("heavyball AdamW compile_step", "adamw", "heavyball", "heavyball==3.2.*",
     lambda m: lambda ps: m.AdamW(ps, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01, compile_step=True),
     lambda: step_bytes("adamw"), True),
    ("torchao AdamW8bit", "adamw", "torchao.optim", "torchao",
     lambda m: lambda ps: m.AdamW8bit(ps, lr=1e-3, weight_decay=0.01), _adamw8bit_bytes, True),
]


def peer_candidates(optimizers: list[str]) -> tuple[list[Candidate], list[Unavailable]]:
    """The peers of ``optimizers`` (AdamW's always: it is the baseline), and those that cannot run, with why."""
    found: list[Candidate] = []
    missing: list[Unavailable] = []
    modules: dict[str, ModuleType | str] = {}
    for label, algorithm, module, requirement, builder, min_bytes, compiles in PEERS:
        if algorithm != "adamw" and algorithm not in optimizers:
            continue
        source = label.split(" ", 1)[0]
        if module not in modules:
            try:
                modules[module] = importlib.import_module(module)
            except ImportError as exc:
                modules[module] = f"not installed ({exc}); pip install -c constraints.txt '{requirement}'"
            except Exception as exc:  # noqa: BLE001 - a peer built for another torch may raise anything on import
                modules[module] = f"import failed: {type(exc).__name__}: {str(exc)[:300]}"
        loaded = modules[module]
        build = loaded if isinstance(loaded, str) else builder(loaded)
        if isinstance(build, str):
            missing.append(Unavailable(label, source, build))
        else:
            found.append(Candidate(label, algorithm, build, min_bytes(), source, compiles))
    return found, missing
