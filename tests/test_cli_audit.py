"""The command line as a user meets it: refusals that name the flag and the value, before anything is timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from optarena.cli import main


def test_a_model_layout_whose_library_is_missing_is_a_bad_argument(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from optarena import speed

    real_import = builtins.__import__

    def without_ultralytics(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "ultralytics":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ultralytics)
    with pytest.raises(ImportError, match="pip install ultralytics"):  # a library caller can catch it
        speed.yolov8n_shapes()
    with pytest.raises(SystemExit) as info:
        main(["speed", "--no-peers", "--optimizers", "lion", "--paths", "loop", "--layouts", "200x64,yolov8n"])
    assert info.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == ""  # refused before anything was measured
    assert printed.err == ("optarena: error: Invalid --layouts: '200x64,yolov8n' (the yolov8n layout needs "
                           "ultralytics (No module named 'ultralytics.nn.tasks'); pip install ultralytics)\n")


def test_speed_refuses_a_blank_json_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """' ' once passed as a file name: the whole run, then a JSON file named ' ' in the current folder."""
    monkeypatch.chdir(tmp_path)  # where a regression would write it
    with pytest.raises(SystemExit) as info:
        main(["speed", "--no-peers", "--optimizers", "lion", "--paths", "loop", "--layouts", "200x64", "--rounds",
              "1", "--steps", "1", "--json", " "])
    assert info.value.code == 2
    assert "argument --json: expected a file path, got ' '" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_musgd_before_training_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    """``optarena list`` offers musgd, but only ultralytics' trainer builds it: the demo once trained every name
    before it (minutes at 30 epochs) and then stopped on it, the table never printed."""
    with pytest.raises(SystemExit) as info:
        main(["demo", "--optimizers", "adamw,musgd,lookahead_musgd", "--epochs", "1"])
    assert info.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == ""  # nothing trained
    assert "argument --optimizers: 'musgd' is built by ultralytics' trainer only" in printed.err, printed.err


def test_tasks_lists_no_batch_size_for_the_surfaces(capsys: pytest.CaptureFixture[str]) -> None:
    # the 2-D surfaces printed batch 1, where the README's table and the report say they have no data to batch
    assert main(["tasks", "--budget", "tiny"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["rosenbrock"][4] == rows["rastrigin"][4] == "–"
    assert rows["digits_mlp"][4] == "64" and rows["noisy_quadratic"][4] == "16,64,256"
