"""8-bit state (``state_dtype="int8"``) checkpoints whose codes or block scales are not what the optimizer wrote:
refused by ``load_state_dict`` with the key named, before anything changes, instead of stepping with garbage."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import optarena


def saved_adan() -> tuple[nn.Parameter, dict[str, Any]]:
    """Adan with 8-bit state after two steps: signed codes (exp_avg, …) and unsigned ones (exp_avg_sq)."""
    gen = torch.Generator().manual_seed(0)
    p = nn.Parameter(torch.randn(64, 80, generator=gen))  # 5120 elements: quantised, a partial last block
    opt = optarena.Adan([p], lr=1e-3, state_dtype="int8")
    for _ in range(2):
        p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return p, copy.deepcopy(opt.state_dict())


def _set(key: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.__setitem__(key, make(state[key]))


TAMPERED = {
    # codes cast to floats (a "convert every tensor to float" pass): their values 0…127 loaded as the momentum
    "codes-as-float32": (_set("exp_avg", torch.Tensor.float), "exp_avg .*torch.float32.*torch.int8"),
    "codes-as-int16": (_set("exp_avg", lambda t: t.to(torch.int16)), "exp_avg .*torch.int16.*torch.int8"),
    # the second moment's unsigned codes read as signed ones: negative moments, NaN at the next step
    "unsigned-as-signed": (_set("exp_avg_sq", lambda t: t.to(torch.int8)), "exp_avg_sq .*torch.int8.*torch.uint8"),
    "signed-as-unsigned": (_set("exp_avg", lambda t: t.view(torch.uint8)), "exp_avg .*torch.uint8.*torch.int8"),
    # integer scales: truncated to whole numbers, silently
    "scales-as-int32": (_set("exp_avg_absmax", lambda t: t.to(torch.int32)), "exp_avg_absmax .*torch.int32"),
    "scales-of-no-buffer": (lambda state: state.__setitem__("bogus_absmax", state["exp_avg_absmax"].clone()),
                            "bogus_absmax"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
@pytest.mark.parametrize("state_dtype", ["int8", None])
def test_tampered_8bit_checkpoint_is_refused(case: str, state_dtype: str | None) -> None:
    p, saved = saved_adan()
    tamper, message = TAMPERED[case]
    tamper(saved["state"][0])
    saved["param_groups"][0]["state_dtype"] = state_dtype  # the check holds whatever the groups say now
    opt = optarena.Adan([p], lr=1e-3, state_dtype="int8")
    with pytest.raises(ValueError, match=f"Adan.load_state_dict: the state of parameter 0 of group 0 .*{message}"):
        opt.load_state_dict(saved)
    assert not opt.state  # refused before anything changed


def test_untampered_and_converted_checkpoints_still_load() -> None:
    """What the check must not refuse: the checkpoint itself, block scales in another float dtype (converted),
    codes with fp32 state beside them (state_dtype switched mid-run), and fp32 state in an 8-bit optimizer."""
    p, saved = saved_adan()
    for state_dtype in ("int8", None):
        opt = optarena.Adan([p], lr=1e-3, state_dtype=state_dtype)
        opt.load_state_dict(copy.deepcopy(saved))
        assert opt.state[p]["exp_avg_sq"].dtype == torch.uint8
    widened = copy.deepcopy(saved)
    widened["state"][0]["exp_avg_absmax"] = widened["state"][0]["exp_avg_absmax"].double()
    opt = optarena.Adan([p], lr=1e-3, state_dtype="int8")
    opt.load_state_dict(widened)
    assert torch.equal(opt.state[p]["exp_avg_absmax"], saved["state"][0]["exp_avg_absmax"])
    mixed = copy.deepcopy(saved)
    mixed["state"][0]["prev_grad"] = torch.zeros(p.shape)
    del mixed["state"][0]["prev_grad_absmax"]
    optarena.Adan([p], lr=1e-3, state_dtype="int8").load_state_dict(mixed)
    fp32 = optarena.Adan([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    fp32.step()
    opt = optarena.Adan([p], lr=1e-3, state_dtype="int8")
    opt.load_state_dict(copy.deepcopy(fp32.state_dict()))
    assert opt.state[p]["exp_avg"].dtype == torch.float32

