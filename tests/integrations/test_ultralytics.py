"""ultralytics: optimizer="Lion" (any optarena name) through YOLO.train, ultralytics' groups, lr0 warnings, resume."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ultralytics = pytest.importorskip("ultralytics")

from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import DEFAULT_CFG  # noqa: E402
from ultralytics.utils.nms import TorchNMS  # noqa: E402

import optarena  # noqa: E402
from optarena.integrations import ultralytics as integration  # noqa: E402
from optarena.wrappers import chain  # noqa: E402


def make_dataset(root: Path, images: int = 8) -> Path:
    """64×64 images with a red or blue rectangle or two, YOLO labels, data.yaml."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(images):
            img = np.full((64, 64, 3), 255, np.uint8)
            lines = []
            for _ in range(1 + i % 2):
                w, h = rng.integers(12, 30, 2)
                x0, y0 = rng.integers(0, 64 - w), rng.integers(0, 64 - h)
                cls = int(rng.integers(0, 2))
                img[y0:y0 + h, x0:x0 + w] = (200, 30, 30) if cls == 0 else (30, 30, 200)
                lines.append(f"{cls} {(x0 + w / 2) / 64:.6f} {(y0 + h / 2) / 64:.6f} {w / 64:.6f} {h / 64:.6f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return data


TRAIN_ARGS = dict(imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False, seed=0, deterministic=True,
                  verbose=False, val=True, exist_ok=True)


class StopAfterFirstSave(Exception):
    pass


def snapshot(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, torch.Tensor]]:
    return {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state_dict()["state"].items()}


@pytest.mark.parametrize("name, lr0", [("Lion", 1e-4), ("Adan", 2e-3)])
def test_train_stop_resume_restores_optimizer_state(tmp_path: Path, name: str, lr0: float) -> None:
    data = make_dataset(tmp_path / "data")
    seen: dict[str, object] = {}

    def stop_after_first_save(trainer) -> None:  # epoch 1 of 2 is in last.pt: interrupt like a killed job
        seen["class"] = type(trainer.optimizer)
        seen["groups"] = [(g["param_group"], g["weight_decay"], list(g["params"])) for g in
                          trainer.optimizer.param_groups]
        seen["model"] = trainer.model
        seen["saved"] = snapshot(trainer.optimizer)
        raise StopAfterFirstSave

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(StopAfterFirstSave):
        model.train(data=str(data), epochs=2, optimizer=name, lr0=lr0, project=str(tmp_path / "runs"), name="run",
                    **TRAIN_ARGS)
    assert seen["class"] is getattr(optarena, name)

    # ultralytics' groups: norm weights and biases undecayed, conv weights decayed
    by_id = {id(p): group for group, _, params in seen["groups"] for p in params}
    decay = {group: wd for group, wd, _ in seen["groups"]}
    assert decay["bias"] == 0 and decay["bn"] == 0 and decay["weight"] > 0
    for module in seen["model"].modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                expected = "bias" if pname == "bias" else "bn" if isinstance(module, nn.BatchNorm2d) else "weight"
                assert by_id[id(p)] == expected

    last = tmp_path / "runs" / "run" / "weights" / "last.pt"
    saved_state = torch.load(last, weights_only=False)["optimizer"]["state"]
    assert saved_state.keys() == seen["saved"].keys() and saved_state
    for key, state in seen["saved"].items():
        for buffer, value in state.items():
            stored = saved_state[key][buffer]
            # full precision survives ultralytics' checkpoint: fp32 moments, float64 step counts, bit for bit
            assert stored.dtype == value.dtype == (torch.float64 if buffer == "step" else torch.float32)
            assert torch.equal(stored, value)

    resumed: dict[str, object] = {}

    def at_resume(trainer) -> None:
        if "state" not in resumed:
            resumed["class"] = type(trainer.optimizer)
            resumed["state"] = snapshot(trainer.optimizer)
            resumed["epoch"] = trainer.epoch

    model = YOLO(str(last))
    model.add_callback("on_train_epoch_start", at_resume)
    model.train(resume=True)
    assert resumed["class"] is getattr(optarena, name) and resumed["epoch"] == 1
    for key, state in seen["saved"].items():
        for buffer, value in state.items():
            assert torch.equal(resumed["state"][key][buffer], value)


@pytest.fixture(scope="module")
def yolo_model() -> DetectionModel:
    return DetectionModel("yolov8n.yaml", nc=2, verbose=False)


def fake_trainer(**args: float) -> SimpleNamespace:
    return SimpleNamespace(args=SimpleNamespace(**{"warmup_bias_lr": DEFAULT_CFG.warmup_bias_lr, "lrf": DEFAULT_CFG.lrf,
                                                   **args}), data={"nc": 2})


OPTARENA_NAMES = [n for n in optarena.list_optimizers() if integration.is_optarena_name(n)]


def test_every_optarena_name_not_known_to_ultralytics_is_routed() -> None:
    assert set(OPTARENA_NAMES) == set(optarena.list_optimizers()) - {"adam", "adamw", "adamax", "nadam", "radam",
                                                                      "rmsprop", "sgd", "musgd"}
    assert {"lion", "rlion", "adan", "adax", "adafactor", "momentum", "nesterov"} <= set(OPTARENA_NAMES)
    assert integration.is_optarena_name("Lion") and integration.is_optarena_name("lookahead_Lion")
    assert not integration.is_optarena_name("SGD") and not integration.is_optarena_name("auto")


@pytest.mark.parametrize("name", [n for n in OPTARENA_NAMES if not optarena.get_optimizer_info(n).train_eval_modes]
                         + ["lookahead_lion"])  # schedule-free names are refused (test_schedulefree_integrations)
def test_every_optarena_name_builds_with_ultralytics_groups(yolo_model: DetectionModel, name: str) -> None:
    trainer = fake_trainer()
    lr = optarena.registry.base_optimizer_info(name).default_lr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = integration.build_optimizer(trainer, yolo_model, name, lr=lr, momentum=0.937, decay=5e-4)
    expected = optarena.registry.base_optimizer_info(name).cls
    assert isinstance(opt.base if name.startswith("lookahead_") else opt, expected)
    assert [g["param_group"] for g in opt.param_groups] == ["weight", "bn", "bias"]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 0.0]
    assert all(g["lr"] == lr for g in opt.param_groups)
    n_params = sum(1 for p in yolo_model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params
    assert trainer._optarena_optimizer


@pytest.mark.parametrize("name, low, high", [("Lion", 1e-4, 1e-3 / 3), ("RLion", 1e-3, 1e-2)])
def test_default_lr0_warns_with_recommended_range(yolo_model: DetectionModel, name: str, low: float,
                                                  high: float) -> None:
    with pytest.warns(UserWarning, match=f"lr0=0.01 is ultralytics' default.* {low:g} to {high:g}"):
        integration.build_optimizer(fake_trainer(), yolo_model, name, lr=DEFAULT_CFG.lr0)


def test_lr0_in_range_is_quiet_and_out_of_range_warns(yolo_model: DetectionModel) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        integration.build_optimizer(fake_trainer(), yolo_model, "Lion", lr=2e-4)
        integration.build_optimizer(fake_trainer(), yolo_model, "Adafactor", lr=1e-2)
    with pytest.warns(UserWarning, match="lr0=0.05 is outside the recommended range; for Adan"):
        integration.build_optimizer(fake_trainer(), yolo_model, "Adan", lr=0.05)


def test_bias_warmup_starts_at_zero_for_optarena_only(yolo_model: DetectionModel) -> None:
    trainer = fake_trainer()
    integration.build_optimizer(trainer, yolo_model, "Lion", lr=1e-4)
    assert trainer.args.warmup_bias_lr == 0.0
    trainer = fake_trainer()
    opt = integration.build_optimizer(trainer, yolo_model, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["nesterov"]  # ultralytics' own SGD
    assert trainer.args.warmup_bias_lr == DEFAULT_CFG.warmup_bias_lr and not trainer._optarena_optimizer
    with pytest.raises(NotImplementedError, match="Optimizer 'nosuch' not found"):
        integration.build_optimizer(fake_trainer(), yolo_model, "nosuch")


@pytest.mark.parametrize("name, expected", [
    ("momentum", {"momentum": 0.937, "nesterov": False}),  # ultralytics' momentum, not the registry's fixed 0.9
    ("nesterov", {"momentum": 0.937, "nesterov": True}),
    ("lookahead_sgd", {"momentum": 0.937, "nesterov": True}),  # ultralytics' SGD, wrapped
    ("lookahead_adamw", {"betas": (0.937, 0.999)}),  # ultralytics' AdamW, wrapped
])
def test_sgd_like_optimizers_take_ultralytics_momentum(yolo_model: DetectionModel, name: str,
                                                      expected: dict[str, object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = integration.build_optimizer(fake_trainer(), yolo_model, name, lr=1e-3, momentum=0.937, decay=5e-4)
    for group in chain(opt)[-1].param_groups:
        assert {k: group[k] for k in expected} == expected


@pytest.mark.parametrize("name", ["amos", "nesterov"])
def test_warmup_ramps_sgd_momentum_and_leaves_amos_momentum_alone(tmp_path: Path, name: str) -> None:
    data = make_dataset(tmp_path / "data", images=4)
    steps: list[tuple[list[float], bool]] = []

    def record(optimizer, *_) -> None:
        steps.append(([g["momentum"] for g in optimizer.param_groups],
                      any("exp_avg" in s or "momentum_buffer" in s for s in optimizer.state.values())))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", lambda tr: chain(tr.optimizer)[-1].register_step_post_hook(record))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one batch per epoch, one step per batch (nbs=batch); warm-up over the first 2 of 3 steps
        model.train(data=str(data), epochs=3, warmup_epochs=2, nbs=4, optimizer=name, lr0=1e-2,
                    project=str(tmp_path / "runs"), name="run", **{**TRAIN_ARGS, "val": False})
    momenta = [m[0] for m, _ in steps]
    assert all(len(set(m)) == 1 for m, _ in steps) and len(steps) == 3
    if name == "amos":  # its own momentum 0 throughout: no momentum buffer, whatever the warm-up writes
        assert momenta == [0.0, 0.0, 0.0] and not any(buffered for _, buffered in steps)
    else:  # ultralytics' ramp, warmup_momentum 0.8 to momentum 0.937, as for its own SGD
        assert momenta == pytest.approx([0.8, 0.8685, 0.937]) and steps[-1][1]
        assert all(g["nesterov"] for g in model.trainer.optimizer.param_groups)


def test_amos_gets_no_lr_decay_from_ultralytics(yolo_model: DetectionModel) -> None:
    trainer = fake_trainer()  # ultralytics' default lrf=0.01 would decay lr0 100x on top of Amos' own decay
    with pytest.warns(UserWarning, match="amos decays its lr itself; setting lrf=1.0"):
        integration.build_optimizer(trainer, yolo_model, "amos", lr=2e-2)
    assert trainer.args.lrf == 1.0
    with pytest.raises(ValueError, match=r"Invalid lrf: 0.1 for 'amos'.*set lrf=1.0"):
        integration.build_optimizer(fake_trainer(lrf=0.1), yolo_model, "amos", lr=2e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        integration.build_optimizer(fake_trainer(lrf=1.0), yolo_model, "amos", lr=2e-2)
    trainer = fake_trainer()
    integration.build_optimizer(trainer, yolo_model, "Lion", lr=2e-4)  # decays with ultralytics' schedule
    assert trainer.args.lrf == DEFAULT_CFG.lrf


def test_muon_routes_hidden_matrices_and_warns_when_there_are_none(yolo_model: DetectionModel) -> None:
    with pytest.warns(UserWarning, match="muon here is plain AdamW: no parameter goes to Muon, which takes 2-D"):
        opt = integration.build_optimizer(fake_trainer(), yolo_model, "muon", lr=1e-3, momentum=0.937)
    assert not any(g["use_muon"] for g in opt.param_groups)  # conv kernels are 4-D
    hidden, head = nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), hidden, head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = integration.build_optimizer(fake_trainer(), model, "muon", lr=1e-3, momentum=0.937, decay=5e-4)
    to_muon = [p for g in opt.param_groups if g["use_muon"] for p in g["params"]]
    assert len(to_muon) == 1 and to_muon[0] is hidden.weight  # the head stays on AdamW, as create_optimizer does
    assert all(g["momentum"] == 0.937 and g["param_group"] == "weight" for g in opt.param_groups if g["use_muon"])


def test_trainer_class_works_without_the_patch(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", images=4)
    integration.unpatch()
    try:
        with pytest.raises(NotImplementedError, match="Optimizer 'RLion' not found"):
            YOLO("yolov8n.yaml").train(data=str(data), epochs=1, optimizer="RLion", lr0=3e-3,
                                       project=str(tmp_path / "runs"), name="plain", **TRAIN_ARGS)
        model = YOLO("yolov8n.yaml")
        model.train(data=str(data), epochs=1, optimizer="RLion", lr0=3e-3, project=str(tmp_path / "runs"),
                    name="run", trainer=integration.OptarenaDetectionTrainer, **TRAIN_ARGS)
        assert type(model.trainer.optimizer) is optarena.RLion
    finally:
        integration.patch()


def test_shim_nms_matches_ultralytics_reference() -> None:
    import torchvision

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + 1 + torch.rand(300, 2, generator=gen) * 30], dim=1)
    scores = torch.rand(300, generator=gen)
    for threshold in (0.3, 0.5, 0.7):
        assert torch.equal(torchvision.ops.nms(boxes, scores, threshold), TorchNMS.nms(boxes, scores, threshold))
