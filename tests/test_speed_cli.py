"""``optarena speed`` smoke test: the quick layouts, two eager paths, a JSON file with every reported column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from optarena.cli import main
from optarena.speed import cpu_description, peak_extra_bytes


def test_speed_quick_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    assert main(["speed", "--quick", "--optimizers", "lion,adan", "--paths", "loop,foreach", "--no-peers",
                 "--layouts", "20x2K,200x64", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    text = capsys.readouterr().out
    assert "in-place bandwidth" in text and "torch AdamW fused" in text and "lion foreach" in text
    data = json.loads(out.read_text())
    assert data["meta"]["bandwidth_gb_s"] > 0 and isinstance(data["meta"]["processor"], str)
    rows = data["results"]
    assert {r["layout"] for r in rows} == {"20x2K", "200x64"}
    assert {r["label"] for r in rows} >= {"lion loop", "adan foreach", "torch AdamW fused", "torch AdamW foreach"}
    for r in rows:
        assert r["ms_per_step"] > 0 and r["gb_per_s"] > 0 and r["vs_adamw_fused"] > 0
    lion = next(r for r in rows if r["label"] == "lion loop")
    assert lion["state_bytes_per_param"] == pytest.approx(4.0)
    assert next(r for r in rows if r["label"] == "adan loop")["state_bytes_per_param"] == pytest.approx(16, abs=0.2)


def test_speed_rejects_unknown_names() -> None:
    with pytest.raises(SystemExit):
        main(["speed", "--optimizers", "lino"])


def test_model_layouts_are_opt_in_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optarena import speed

    vit = speed.vit_s_shapes()
    assert len(vit) == 144 and sum(torch.Size(s).numel() for s in vit) == 21_293_568
    monkeypatch.setitem(speed.MODEL_LAYOUTS, "tiny-model", lambda: [(3, 5), (5,), (2, 2, 2)])
    out = tmp_path / "speed.json"
    assert main(["speed", "--quick", "--optimizers", "lion", "--paths", "foreach", "--no-peers",
                 "--layouts", "tiny-model", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["layouts"] == {"tiny-model": [[3, 5], 3]}
    assert {r["layout"] for r in data["results"]} == {"tiny-model"}
    pytest.importorskip("ultralytics")  # installed with the integrations extra, as CI does
    yolo = speed.yolov8n_shapes()
    assert len(yolo) == 183 and sum(torch.Size(s).numel() for s in yolo) == 3_157_184


def test_peak_memory_probe_keeps_stderr_clean_but_passes_other_output_on(capfd: pytest.CaptureFixture[str]) -> None:
    """The profiler behind ``peak_extra_bytes`` prints two ``USDT:`` lines per call to fd 2 (torch 2.13's kineto);
    the speed table must not drown in them, and nothing else written meanwhile may be lost."""

    def step() -> None:
        torch.ones(1024).add_(1)
        os.write(2, b"USDT: kineto-like chatter\nreal message\n")

    assert peak_extra_bytes(step) >= 1024 * 4  # the probe still sees the step's allocation
    err = capfd.readouterr().err
    assert "USDT" not in err
    assert "real message" in err


def test_cpu_description_names_model_family_and_widest_vector_unit(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
                       "flags\t\t: fpu sse2 avx avx2 avx512f\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n")
    assert cpu_description(str(cpuinfo)) == "AMD EPYC, family 26 model 2, avx512f"
    cpuinfo.write_text("model name\t: Some ARM core\nFeatures\t: fp asimd\n")
    assert cpu_description(str(cpuinfo)) == "Some ARM core, asimd"
