"""Learning-rate schedules and weight averaging that the derived optimizers use (thin layers over torch)."""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Mapping

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .validation import check_number


def piecewise_linear_multiplier(points: Mapping[int, float], step: int) -> float:
    """The multiplier at ``step`` for ``points`` {step: multiplier}, linear in between, constant after the last.

    As in Su Jianlin's schedule, a first point after step 0 means a linear warm-up from 0: ``{1000: 1, 2000: 0.1}``
    rises from 0 to 1 over 1000 steps, then falls to 0.1 at step 2000 and stays there.
    """
    xs = sorted(points)
    ys = [float(points[x]) for x in xs]
    if xs[0] != 0:
        xs, ys = [0, *xs], [0.0, *ys]
    if step >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, step) - 1
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return y0 + (y1 - y0) * (step - x0) / (x1 - x0)


def piecewise_linear(optimizer: Optimizer, points: Mapping[int, float]) -> LambdaLR:
    """A torch LR scheduler multiplying each group's initial lr by the piecewise-linear ``points``.

    Call ``scheduler.step()`` once per optimizer update (with gradient accumulation: when ``did_update``).
    """
    return LambdaLR(optimizer, piecewise_linear_lambda(points))


def piecewise_linear_lambda(points: Mapping[int, float], name: str = "points") -> Callable[[int], float]:
    """``step → multiplier`` for ``points``, checked (what :func:`piecewise_linear` schedules); errors call the
    argument ``name``."""
    if not isinstance(points, Mapping) or not points:  # a list of pairs failed deep inside with AttributeError
        raise ValueError(f"Invalid {name}: {points!r} (give a dict of at least one {{step: multiplier}} pair)")
    for step, multiplier in points.items():
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"Invalid step in {name}: {step!r} (steps are integers >= 0)")
        if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real) or not 0 <= multiplier < math.inf:
            raise ValueError(f"Invalid multiplier in {name}: {multiplier!r} at step {step} (a finite number >= 0)")
    frozen = {int(step): float(multiplier) for step, multiplier in points.items()}  # numpy's ints and floats too
    return lambda step: piecewise_linear_multiplier(frozen, step)


def ema_model(model: nn.Module, decay: float = 0.999, *, use_buffers: bool = True) -> AveragedModel:
    """An exponential moving average of ``model``'s weights: torch's ``AveragedModel`` with an EMA rule.

    Call ``ema.update_parameters(model)`` after each optimizer update (the first call copies the weights, later
    calls average); evaluate with ``ema`` (or ``ema.module``).
    ``use_buffers=True`` averages BatchNorm statistics too, so no extra ``update_bn`` pass is needed.
    """
    check_number("decay", decay, high=1.0, high_open=True)  # NaN, a string and a tensor too
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=use_buffers)
