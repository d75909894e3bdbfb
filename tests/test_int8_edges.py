"""Edges of 8-bit state (``state_dtype="int8"``) that a user meets around checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optarena


@pytest.mark.parametrize("torch_cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RAdam])
@pytest.mark.parametrize("state_dtype", ["int8", None])
def test_torchs_adam_state_dict_is_refused_by_adax(torch_cls: type[torch.optim.Optimizer],
                                                   state_dtype: str | None) -> None:
    """torch's Adam, AdamW and RAdam keep the state keys AdaX keeps (step, exp_avg, exp_avg_sq) but not its second
    moment ((1+β2)·v + β2·g², not an average): their state dict must not load as AdaX's, 8-bit or not."""
    p = nn.Parameter(torch.randn(64, 80))  # 5120 elements: 8-bit codes under state_dtype="int8"
    source = torch_cls([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    source.step()
    opt = optarena.AdaX([p], state_dtype=state_dtype)
    with pytest.raises(ValueError, match="AdaX.load_state_dict: param group 0 has (amsgrad, )?capturable.*another "
                                         "optimizer"):
        opt.load_state_dict(source.state_dict())
    assert not opt.state  # refused before anything changed



def test_adams_state_is_refused_by_adax_built_from_adams_groups() -> None:
    """Groups copied from torch's Adam carry its keys ("amsgrad", "capturable"): they still mark Adam's state as
    foreign to AdaX, whose second moment means something else."""
    p = nn.Parameter(torch.randn(64, 80))
    adam = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    adam.step()
    adax = optarena.AdaX([dict(g) for g in adam.param_groups], lr=1e-3)
    with pytest.raises(ValueError, match="AdaX.load_state_dict: param group 0 has amsgrad, capturable"):
        adax.load_state_dict(adam.state_dict())
