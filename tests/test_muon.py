"""``"muon"``: torch's Muon on hidden matrices plus AdamW on the rest, as one optimizer (optarena.optim.muon)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import optarena
from optarena.optim.muon import MuonAdamW

TESTS_DIR = Path(__file__).parent
LR, WD, STEPS = 1e-2, 0.1, 10


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.pos = nn.Parameter(torch.randn(6, 16) * 0.02)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x) + self.pos))


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "transformer":
        return TinyLM()
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.SiLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 32), nn.SiLU(), nn.Linear(32, 10))


#: The split by hand: hidden matrices to Muon; embeddings, the positional table, the head, conv kernels, biases
#: and norm weights to AdamW (decay on >= 2-D weights only, as the factory does).
EXPECTED_MUON = {"transformer": ["enc.self_attn.in_proj_weight", "enc.self_attn.out_proj.weight",
                                 "enc.linear1.weight", "enc.linear2.weight"],
                 "cnn": ["6.weight"]}


def batches(kind: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    if kind == "transformer":
        return [(x, x) for x in (torch.randint(0, 40, (4, 6), generator=g) for _ in range(n))]
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def train(model: nn.Module, optimizers: list[torch.optim.Optimizer], kind: str, data: list) -> None:
    for x, y in data:
        out = model(x)
        loss = nn.functional.cross_entropy(out.flatten(0, -2) if kind == "transformer" else out, y.flatten())
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()


def by_hand(model: nn.Module, kind: str) -> list[torch.optim.Optimizer]:
    named = dict(model.named_parameters())
    muon = [named[n] for n in EXPECTED_MUON[kind]]
    rest = [(n, p) for n, p in named.items() if n not in EXPECTED_MUON[kind]]
    decay = [p for n, p in rest if p.ndim >= 2 and not n.endswith(".bias")]
    no_decay = [p for n, p in rest if not (p.ndim >= 2 and not n.endswith(".bias"))]
    return [torch.optim.Muon(muon, lr=LR, weight_decay=WD, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=LR)]


@pytest.mark.parametrize("kind", ["transformer", "cnn"])
def test_equals_torch_muon_plus_adamw_bitwise(kind: str) -> None:
    ours, theirs = make_model(kind), make_model(kind)
    opt = optarena.create_optimizer(ours, "muon", lr=LR, weight_decay=WD)
    names = {id(p): n for n, p in ours.named_parameters()}
    assert sorted(names[id(p)] for g in opt.param_groups if g["use_muon"] for p in g["params"]) == \
        sorted(EXPECTED_MUON[kind])
    data = batches(kind, STEPS)
    train(ours, [opt], kind, data)
    train(theirs, by_hand(theirs, kind), kind, data)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


def test_param_groups_are_the_halves_groups_and_a_scheduler_drives_both() -> None:
    model = make_model("transformer")
    opt = optarena.create_optimizer(model, "muon", lr=LR, weight_decay=WD, adamw_lr=3e-3)
    assert all(any(g is h for h in opt.muon.param_groups + opt.adamw.param_groups) for g in opt.param_groups)
    assert [g["lr"] for g in opt.param_groups] == [LR, 3e-3, 3e-3]
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, [opt], "transformer", batches("transformer", 2))
    scheduler.step()
    scheduler.step()
    assert [g["lr"] for g in opt.muon.param_groups] == [LR / 4]
    assert [g["lr"] for g in opt.adamw.param_groups] == [3e-3 / 4, 3e-3 / 4]


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS),
    lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=LR / 10, max_lr=LR, step_size_up=3),
], ids=["OneCycleLR", "CyclicLR"])
def test_momentum_cycling_schedulers_drive_both_halves(make_scheduler) -> None:
    # torch's schedulers cycle AdamW's beta1 and Muon's momentum; one over MuonAdamW must do both
    ours, theirs = make_model("transformer"), make_model("transformer")
    opt = optarena.create_optimizer(ours, "muon", lr=LR, weight_decay=WD)
    by_hand_opts = by_hand(theirs, "transformer")
    schedulers = [make_scheduler(opt)] + [make_scheduler(o) for o in by_hand_opts]
    for x, y in batches("transformer", STEPS - 1):
        train(ours, [opt], "transformer", [(x, y)])
        train(theirs, by_hand_opts, "transformer", [(x, y)])
        for scheduler in schedulers:
            scheduler.step()
    assert opt.muon.param_groups[0]["momentum"] != 0.95  # it moved
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


def test_momentum_set_directly_reaches_betas() -> None:
    model = make_model("transformer")
    opt = optarena.create_optimizer(model, "muon", lr=LR)
    group = opt.muon.param_groups[0]
    group["momentum"] = 0.5  # as ultralytics' warm-up does
    train(model, [opt], "transformer", batches("transformer", 1))
    assert group["momentum"] == 0.5 and group["betas"][0] == 0.5
    assert opt.state_dict()["param_groups"][0]["betas"][0] == 0.5


def test_closure_and_zero_grad() -> None:
    model = make_model("cnn")
    opt = optarena.create_optimizer(model, "muon", lr=LR)
    x, y = batches("cnn", 1)[0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert len(opt.state) == len(list(model.parameters()))
    assert optarena.state_bytes(opt) > 0


def test_state_dict_resumes_in_a_fresh_process(tmp_path: Path) -> None:
    kind = "transformer"
    model = make_model(kind)
    opt = optarena.create_optimizer(model, "muon", lr=LR, weight_decay=WD)
    data = batches(kind, STEPS)
    train(model, [opt], kind, data[:4])
    payload = {"kind": kind, "model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
               "batches": data[4:], "threads": torch.get_num_threads()}  # bf16 matmuls round per thread count
    twin = copy.deepcopy((model, opt))
    train(model, [opt], kind, data[4:])
    torch.save(payload, tmp_path / "in.pt")
    subprocess.run([sys.executable, str(TESTS_DIR / "muon_worker.py"), str(tmp_path / "in.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=TESTS_DIR)
    resumed = torch.load(tmp_path / "out.pt", weights_only=True)
    for a, b in zip(model.parameters(), resumed):
        assert torch.equal(a, b)
    train(twin[0], [twin[1]], kind, data[4:])  # a deep copy steps like the original
    for a, b in zip(model.parameters(), twin[0].parameters()):
        assert torch.equal(a, b)
    assert opt.state_dict()["param_groups"] == twin[1].state_dict()["param_groups"]


def test_routing_rules() -> None:
    model = make_model("transformer")
    opt = optarena.create_optimizer(model, "muon", adamw_params=["enc.linear1"])
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert id(model.enc.linear1.weight) not in muon and id(model.head.weight) in muon  # user-named replaces head
    plain = optarena.create_optimizer(list(model.parameters()), "muon")  # no names: by shape
    assert {id(p) for g in plain.param_groups if g["use_muon"] for p in g["params"]} == \
        {id(p) for p in model.parameters() if p.ndim == 2}
    last = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # no head name: the last Linear
    opt = optarena.create_optimizer(last, "muon")
    assert [g["params"] for g in opt.param_groups if g["use_muon"]] == [[last[0].weight]]
    only_vectors = optarena.create_optimizer(nn.LayerNorm(4), "muon")
    assert only_vectors.muon is None and len(only_vectors.param_groups) == 1


def test_registry_facts() -> None:
    assert "muon" in optarena.list_optimizers()
    info = optarena.get_optimizer_info("muon")
    assert info.cls is MuonAdamW and info.default_lr == 1e-3
    assert optarena.translate_hparams("muon", lr=1e-3, weight_decay=0.1) == {"lr": 1e-3, "weight_decay": 0.1}


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1.0}, "lr: -1.0"), ({"adamw_lr": float("nan")}, "adamw_lr"), ({"momentum": 1.5}, "momentum: 1.5"),
    ({"adjust_lr_fn": "rms"}, "adjust_lr_fn: 'rms'"), ({"ns_steps": 0}, "ns_steps: 0"), ({"betas": (0.9,)}, "betas"),
    ({"eps": 0.0}, "eps: 0.0"), ({"adamw_params": "nope"}, "adamw_params: 'nope'"),
])
def test_bad_input_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        optarena.create_optimizer(make_model("transformer"), "muon", **kwargs)


def test_bad_groups_and_foreign_state_are_refused() -> None:
    model = make_model("transformer")
    with pytest.raises(ValueError, match="use_muon=True"):
        MuonAdamW([{"params": [model.head.bias], "use_muon": True}])
    with pytest.raises(ValueError, match="adamw_params"):
        optarena.create_optimizer(list(model.parameters()), "muon", adamw_params="head")
    opt = optarena.create_optimizer(model, "muon")
    train(model, [opt], "transformer", batches("transformer", 1))
    before = copy.deepcopy(opt.state_dict())
    adamw = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="another optimizer"):
        opt.load_state_dict({**before, "param_groups": [{k: v for k, v in g.items() if k != "use_muon"}
                                                        for g in before["param_groups"]]})
    with pytest.raises(ValueError, match="param groups"):
        opt.load_state_dict(adamw.state_dict())
    other = optarena.create_optimizer(nn.Linear(3, 5), "muon")
    other_model = TinyLM()
    other_model.enc.linear1 = nn.Linear(16, 16)
    other_model.enc.linear2 = nn.Linear(16, 16)
    other_opt = optarena.create_optimizer(other_model, "muon")
    train(other_model, [other_opt], "transformer", batches("transformer", 1))
    with pytest.raises(ValueError, match="another model"):
        opt.load_state_dict(other_opt.state_dict())
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict({**before, "param_groups": [{**g, "lr": -5.0} for g in before["param_groups"]]})
    assert opt.state_dict()["param_groups"] == before["param_groups"] and other.param_groups


def test_group_values_are_checked_when_added_and_before_each_step() -> None:
    model = make_model("transformer")
    hidden, bias = model.enc.linear1.weight, model.enc.linear1.bias
    with pytest.raises(ValueError, match="Muon part.*momentum: 5"):
        MuonAdamW([{"params": [hidden], "momentum": 5}])
    with pytest.raises(ValueError, match=r"AdamW part.*betas\[0\]: 1.5"):
        MuonAdamW([{"params": [bias], "betas": (1.5, 0.9)}])
    opt = MuonAdamW([hidden, bias], lr=LR)
    with pytest.raises(ValueError, match="ns_steps: 0"):  # refused before either half takes it
        opt.add_param_group({"params": [model.enc.linear2.weight], "ns_steps": 0})
    assert len(opt.param_groups) == 2
    for index, key, value, match in ((0, "momentum", 2.0, "momentum: 2.0"), (0, "lr", float("nan"), "lr: nan"),
                                     (1, "betas", (0.9, 1.5), r"betas\[1\]: 1.5")):
        opt = MuonAdamW([hidden, bias], lr=LR)
        train(model, [opt], "transformer", batches("transformer", 1))
        before = [hidden.detach().clone(), bias.detach().clone()]
        opt.param_groups[index][key] = value  # as a scheduler or a user would, mid-run
        with pytest.raises(ValueError, match=f"step: param group {index}.*{match}"):
            train(model, [opt], "transformer", batches("transformer", 1))
        assert torch.equal(hidden, before[0]) and torch.equal(bias, before[1])  # nothing moved
    saved = opt.state_dict()
    with pytest.raises(ValueError, match="param group 0.*momentum: 1.5"):
        opt.load_state_dict({**saved, "param_groups": [{**saved["param_groups"][0], "momentum": 1.5},
                                                       saved["param_groups"][1]]})
