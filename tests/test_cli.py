"""The optarena command line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import optarena
from optarena.cli import main


def test_list_prints_every_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in optarena.list_optimizers():
        assert f"\n{name} " in out
    for name in ("lookahead_adamw", "lookahead_lion", "lookahead_muon"):
        assert name in out


def test_demo_prints_a_table_for_each_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--optimizers", "adamw,lion", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "val acc" in out
    assert [line.split()[0] for line in out.splitlines()[-2:]] == ["adamw", "lion"]


def test_unknown_optimizer_exits_2_with_the_closest_match(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--optimizers", "adamw,lino"])
    assert info.value.code == 2
    assert "Did you mean 'lion'?" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "optarena", "list"], capture_output=True, text=True, check=True)
    assert "rlion" in done.stdout


def test_the_commands_outside_the_arena_run_without_its_extra() -> None:
    """optuna and SQLAlchemy come with the ``arena`` extra; ``list`` (and ``demo``, ``speed``) must not need them (the
    speed command's parser once imported the arena's storage for a constant)."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('optuna', 'sqlalchemy'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from optarena.cli import main\n"
            "main(['list'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "rlion" in done.stdout, done.stderr[-2000:]


USER_TASKS = str(Path(__file__).resolve().parent / "arena_user_tasks.py")


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, says", [
    (("compare", "--optimizers", ","), "argument --optimizers: expected comma-separated optimizer names"),
    (("compare", "--optimizers", ""), "argument --optimizers: expected comma-separated optimizer names"),
    (("demo", "--optimizers", ","), "argument --optimizers: expected comma-separated optimizer names"),
    (("demo", "--epochs", "0"), "argument --epochs: expected a positive integer, got '0'"),
    (("demo", "--epochs", "-3"), "argument --epochs: expected a positive integer, got '-3'"),
    (("compare", "--task", f"{USER_TASKS}:linear", "--steps", "5"), "Invalid --steps: 5 (it sets lightning and hf"),
    (("compare", "--tasks", "digits_mlp", "--higher-is-better"), "Invalid --higher-is-better: given"),
    (("compare", "--task", f"{USER_TASKS}:linear", "--metric", "acc"), "Invalid --metric: 'acc'"),
    (("compare", "--task", f"{USER_TASKS}:linear", "--epochs", "3"), "Invalid --epochs: 3 (it sets ultralytics"),
    (("compare", "--task", f"{USER_TASKS}:linear", "--storage", "sqlite://"), "Invalid --storage: 'sqlite://' is an "
                                                                              "in-memory SQLite database"),
    (("compare", "--task", f"{USER_TASKS}:linear", "--storage", "sqlite:///:memory:"), "in-memory SQLite database"),
    (("compare", "--task", f"{USER_TASKS}:linear", "--threads", "2147483648"), "Invalid threads: 2147483648 (at most"),
    (("compare", "--task", f"{USER_TASKS}:needs_an_argument"), "calling it failed: TypeError: needs_an_argument() "
                                                               "missing 1 required positional argument"),
    (("compare", "--task", "json:loads"), "Invalid task: 'json:loads' (calling it failed: TypeError"),
    (("compare", "--task", f"{USER_TASKS}:without_a_model"), "make_model must be callable, got None"),
])
def test_bad_arguments_are_refused_naming_them(capsys, tmp_path, argv, says):
    err = _refused(capsys, *argv, *(("--out", str(tmp_path / "out")) if argv[0] == "compare" else ()))
    assert says in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, source, says", [
    ("tasks.txt", "x = 1\n", "is not a Python file (.py)"),
    ("syntax.py", "def make(:\n", "SyntaxError: invalid syntax"),
    ("raises.py", "raise RuntimeError('boom at import')\n", "importing"),
])
def test_task_files_that_cannot_load_are_refused_naming_them(capsys, tmp_path, name, source, says):
    (tmp_path / name).write_text(source)
    spec = f"{tmp_path / name}:make"
    err = _refused(capsys, "compare", "--task", spec, "--out", str(tmp_path / "out"))
    assert f"Invalid task: {spec!r}" in err and says in err, err


def test_an_out_name_too_long_for_the_file_system_is_refused(capsys, tmp_path):
    err = _refused(capsys, "compare", "--task", f"{USER_TASKS}:linear", "--out", str(tmp_path / ("a" * 300)))
    assert "Invalid --out:" in err and "File name too long" in err, err


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="ultralytics resolves dataset names")
def test_an_ultralytics_dataset_that_exists_nowhere_is_refused_before_any_run(capsys, tmp_path):
    err = _refused(capsys, "compare", "--task", "ultralytics:yolov8n.yaml:nope.yaml", "--out", str(tmp_path / "out"))
    assert "(data 'nope.yaml' is no file here, nor a dataset that ultralytics ships)" in err, err


def test_demo_trains_a_lookahead_name_that_list_offers(capsys: pytest.CaptureFixture[str]) -> None:
    """``optarena list`` offers lookahead_ names and --optimizers takes them; the demo once trained the model and
    then failed looking up the lr. Lookahead's slow weights count beside Lion's momentum."""
    assert main(["demo", "--optimizers", "lookahead_lion,LION,lion", "--epochs", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[-2:]]
    assert [row[0] for row in rows] == ["lookahead_lion", "lion"]  # a name given twice trains once
    assert [row[1] for row in rows] == ["1.0e-04", "1.0e-04"]  # Lion's default lr
    assert [float(row[-1]) for row in rows] == [8.0, 4.0]  # state B/param: slow weights + momentum, momentum


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999", "x"])
def test_demo_refuses_a_seed_torch_cannot_take(capsys: pytest.CaptureFixture[str], seed: str) -> None:
    err = _refused(capsys, "demo", "--seed", seed)
    assert f"argument --seed: expected an integer from 0 to {2**63 - 2}, got {seed!r}" in err, err


def test_ctrl_c_in_the_demo_exits_130_without_a_traceback(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from optarena import demo

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    try:
        code = main(["demo", "--epochs", "1"])
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole test session
        pytest.fail("Ctrl-C escaped optarena demo as a traceback")
    assert code == 130
    assert capsys.readouterr().err.strip() == "optarena: interrupted"


def test_compare_help_states_the_defaults_it_applies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The defaults of --seeds (tiny had none in the help), --stale-after and --budget, as the config applies them."""
    from optarena.arena.config import CompareConfig

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for budget in ("tiny", "quick", "full"):
        seeds = CompareConfig(budget=budget, optimizers=("adamw",), tasks=("rosenbrock",), out=tmp_path).seeds
        assert f"{budget} {seeds}" in text.split("seeds per chosen setting (default by budget:")[1].split(")")[0]
    assert "(default: 600; at least 60, twice the 30 s heartbeat)" in text
    assert CompareConfig(optimizers=("adamw",), tasks=("rosenbrock",), out=tmp_path).stale_after == 600
    with pytest.raises(ValueError, match="at least 60"):
        CompareConfig(optimizers=("adamw",), tasks=("rosenbrock",), out=tmp_path, stale_after=59.9)
    assert "per task (default: quick)" in text
