"""What optarena knows about each optimizer, in one record per name (after timm's registry), and where the records
are kept. Every per-optimizer fact that code outside the optimizer's own class needs lives in its
:class:`OptimizerInfo`; the factory, the fused step, the wrappers, the arena, ``optarena speed`` and the
integrations read it from here. This module imports nothing of optarena's, so every layer can use it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

LOOKAHEAD_PREFIX = "lookahead_"
DEFAULT_FUSED_CHUNKS = (32, 4, 1)


@dataclass(frozen=True)
class Translation:
    """How an optimizer's hyper-parameters relate to a tuned AdamW's, with the authors' reasoning."""

    lr_factor: float
    #: The authors' range for the lr ratio to AdamW's, for a sweep.
    lr_range: tuple[float, float]
    wd_factor: float
    note: str
    extra: tuple[tuple[str, Any], ...] = ()
    #: If set, lr is this absolute value and wd is chosen so that the per-step decay lr·wd is AdamW's.
    absolute_lr: float | None = None


@dataclass(frozen=True)
class OptimizerInfo:
    """What the factory, the arena and the integrations know about one optimizer."""

    name: str
    cls: type
    default_lr: float
    #: How many betas the ``betas`` argument holds (0: it takes none).
    num_betas: int = 0
    #: The form of the ``eps`` argument: one number (Adam's), a pair (Adafactor's ``(eps1, eps2)``), or None.
    eps: Literal["number", "pair"] | None = None
    has_momentum: bool = False
    #: Bytes of optimizer state per fp32 parameter element (Adafactor: per element of a vector; a matrix costs
    #: only R + C numbers).
    state_bytes_per_param: float = 0.0
    #: Arguments always passed (``momentum=0.9`` for "momentum") unless the caller overrides them.
    fixed_kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "optarena"
    description: str = ""
    #: Whether each element's update depends only on that element's gradient, state and per-tensor scalars: such
    #: an optimizer can step a subset of rows (``Lazy``) and see every tensor as 1-D (the fused step).
    elementwise: bool = False
    #: Whether it takes ``state_dtype="int8"`` (blockwise 8-bit moments: ``optarena.optim.quant``): its buffers are
    #: elementwise moments made by ``zeros_state``, each declared signed or non-negative.
    int8_state: bool = False
    #: The authors' rule for starting from a tuned AdamW configuration (``optarena.translate_hparams``).
    translation: Translation | None = None
    #: Whether the arena also runs it at AdamW-sized learning rates (claims about exactly that exist for it).
    stress: bool = False
    #: Bytes a step must read and write per parameter element (fp32 params and grads; fp32 state, or bf16 state):
    #: params read and written 8, the grad read 4, each state buffer read and written; what ``optarena speed``
    #: divides by the measured time.
    step_bytes: int | None = None
    step_bytes_bf16_state: int | None = None
    #: Tensors per compiled call of the fused step, largest first (see ``optarena.optim.fused``).
    fused_chunks: tuple[int, ...] = DEFAULT_FUSED_CHUNKS
    #: Elementwise algorithms: tensors of fewer elements share one fused call, copied in and out of a pack; larger
    #: ones are stepped in place in chunks, through the large tensors' kernels. Where copying costs more than the
    #: chunked calls depends on the calls' tensor count and buffers: from 512–1024 elements for Lion's 32 tensors per
    #: call, 1–2K for Adan's 16 (benchmarks/NOTES.md, "packs"). 8-bit groups pack their fp32-state tensors below 32K.
    fused_packed_below: int = 2048
    #: The same with 8-bit state, where a call's compile time grows faster than its tensor count (200×82K Lion: 75 s
    #: with 32 per call); more per call paid only for Lion's kernel, the least arithmetic per byte
    #: (benchmarks/NOTES.md, "Compile sizes and tensors per call").
    int8_fused_chunks: tuple[int, ...] = (4, 1)
    #: Whether its fused 8-bit kernels keep the new moments in per-block buffers instead of recomputing them for the
    #: encoding (``fused.kernels.INT8_LOCAL_BUFFERS``): measured faster for Lion only; AdaX's and AdEMAMix's kernels
    #: then store full-size temporaries, Adan's and RLion's gain nothing clear (benchmarks/NOTES.md, "8-bit state").
    int8_local_buffers: bool = False
    #: The name under which ultralytics' own trainer builds this optimizer (then ultralytics keeps it).
    ultralytics_name: str | None = None
    #: How ``create_optimizer`` groups the parameters when the optimizer routes them by module, not by shape alone
    #: (Muon's hidden matrices against embeddings and the head): ``(model_or_params, weight_decay,
    #: no_weight_decay, **options) -> groups``; its keyword-only options are factory arguments. None: the usual
    #: decay groups (``param_groups_for_weight_decay``).
    group_params: Callable[..., list[Any]] | None = None
    #: Whether the optimizer keeps two points and must be told which one the parameters should hold (schedule-free:
    #: ``optimizer.train()`` before training steps, ``optimizer.eval()`` before evaluating or saving). The arena and
    #: the integrations call them (:func:`optarena.registry.set_optimizer_mode`).
    train_eval_modes: bool = False
    #: The learning-rate schedule the method was designed for: ``"decay"`` (any decaying schedule; the arena's
    #: cosine) or ``"constant"`` (warm-up then constant: schedule-free methods replace the decay by averaging).
    schedule: Literal["decay", "constant"] = "decay"
    #: Constructor arguments that want the run's total number of steps, which a trainer that knows it passes (the
    #: arena does): AdEMAMix warms α and β3 up over the whole run, as its authors prescribe.
    run_length_kwargs: tuple[str, ...] = ()

    @property
    def has_eps(self) -> bool:
        return self.eps is not None

    def accepted_args(self) -> list[str]:
        """Constructor arguments beyond ``params``."""
        return [n for n in inspect.signature(self.cls).parameters if n != "params"]


_REGISTRY: dict[str, OptimizerInfo] = {}


def register_optimizer(info: OptimizerInfo) -> None:
    """Add (or replace) an optimizer under ``info.name`` (lower case)."""
    _REGISTRY[info.name.lower()] = info


def list_optimizers(source: str | None = None) -> list[str]:
    """Names of the registered optimizers, optionally only those from ``source`` ("optarena" or "torch.optim")."""
    return sorted(n for n, i in _REGISTRY.items() if source is None or i.source == source)


def get_optimizer_info(name: str) -> OptimizerInfo:
    """The registry entry for ``name`` (case-insensitive); an unknown name lists the known ones."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        if isinstance(key, str) and key.removeprefix(LOOKAHEAD_PREFIX) in _REGISTRY:  # said "Unknown optimizer"
            raise ValueError(f"Invalid optimizer: {name!r} here: the {LOOKAHEAD_PREFIX!r} prefix is "
                             "optarena.create_optimizer's (it wraps the optimizer in Lookahead); name "
                             f"{key.removeprefix(LOOKAHEAD_PREFIX)!r} and wrap it in optarena.Lookahead, or build it "
                             "with create_optimizer (the integrations' builders take lookahead=True)")
        close = difflib.get_close_matches(str(key), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown optimizer {name!r}.{hint} Known optimizers: {', '.join(list_optimizers())}")
    return _REGISTRY[key]


def base_optimizer_info(name: str) -> OptimizerInfo:
    """The entry behind a factory name, which may carry the ``lookahead_`` prefix (``"lookahead_lion"``)."""
    return get_optimizer_info(name.lower().removeprefix(LOOKAHEAD_PREFIX) if isinstance(name, str) else name)


def info_for(cls: type) -> OptimizerInfo | None:
    """The entry of ``cls``, or of the nearest registered class it derives from (a user's subclass of Lion is
    elementwise too); None for an unregistered family. Several names may share a class (SGD): they share facts.
    A registered class with ``adapts`` (the registry's checked schedule-free classes) stands for that class too: an
    optimizer built from the package directly still needs its train()/eval() switched."""
    for klass in cls.__mro__:
        for info in _REGISTRY.values():
            if info.cls is klass or getattr(info.cls, "adapts", None) is klass:
                return info
    return None
