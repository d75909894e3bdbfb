"""The optarena command line."""

from __future__ import annotations

import subprocess
import sys

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
