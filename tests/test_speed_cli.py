"""``optarena speed``: the quick layouts, a JSON file with every reported column; peers that free or change the
gradients, fail or are missing; the compiled reference; measured state bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from optarena.cli import main
from optarena.registry import state_bytes
from optarena.speed import Candidate, cpu_description, format_table, peak_extra_bytes, run_layout


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


def test_speed_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    for flag, value in (("--optimizers", "lino"), ("--layouts", "1x16M,3x7")):
        with pytest.raises(SystemExit):
            main(["speed", flag, value])
        assert f"unknown {value.split(',')[-1]}" in capsys.readouterr().err  # argparse's message, no traceback


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


def _tiny_layout() -> list[tuple[int, ...]]:
    return [(16, 32), (64,), (8, 8)]


class _FreesGrads(torch.optim.SGD):
    """Steps like SGD, then drops the gradients as heavyball does (``p.grad = None``)."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class _ScalesGrads(torch.optim.SGD):
    """Steps like SGD, then changes the gradients in place (pytorch-optimizer's Adan per-parameter path once left
    them negated)."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        super().step()
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.mul_(-2)


class _Frozen(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        pass


class _Broken(torch.optim.SGD):
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        raise RuntimeError("no kernel for this device")


def _moves_after(label: str) -> Candidate:
    """A candidate that checks, at every step, that it got the untouched gradients."""

    def build(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
        expected = [p.grad.clone() for p in ps]
        opt = torch.optim.SGD(ps, lr=0.1)
        plain_step = opt.step

        def step(closure: object = None) -> None:
            assert all(p.grad is not None and torch.equal(p.grad, e) for p, e in zip(ps, expected))
            plain_step()

        opt.step = step  # type: ignore[method-assign]
        return opt

    return Candidate(label, "sgd", build, 12.0, "test")


def test_peers_that_free_or_change_grads_are_timed_and_the_others_keep_their_gradients() -> None:
    cands = [Candidate("frees", "sgd", lambda ps: _FreesGrads(ps, lr=0.1), 12.0, "test-peer"),
             _moves_after("after frees"),
             Candidate("scales", "sgd", lambda ps: _ScalesGrads(ps, lr=0.1), 12.0, "test-peer"),
             _moves_after("after scales")]
    results, missing = run_layout("tiny", _tiny_layout(), cands, steps=2, rounds=3, device=torch.device("cpu"),
                                  log=lambda _: None)
    assert missing == []
    by_label = {r.label: r for r in results}
    assert set(by_label) == {"frees", "after frees", "scales", "after scales"}
    assert by_label["frees"].grads_restored and by_label["scales"].grads_restored
    assert not by_label["after frees"].grads_restored
    assert "timed step by step" in format_table(results)


def test_candidates_that_fail_or_freeze_are_reported_with_the_reason() -> None:
    cands = [Candidate("broken", "sgd", lambda ps: _Broken(ps, lr=0.1), 12.0, "test-peer"),
             Candidate("frozen", "sgd", lambda ps: _Frozen(ps, lr=0.1), 12.0, "test-peer"),
             _moves_after("sgd")]
    results, missing = run_layout("tiny", _tiny_layout(), cands, steps=1, rounds=1, device=torch.device("cpu"),
                                  log=lambda _: None)
    assert [r.label for r in results] == ["sgd"]
    reasons = {m.label: m.reason for m in missing}
    assert "no kernel for this device" in reasons["broken"] and "did not move" in reasons["frozen"]
    assert {m.layout for m in missing} == {"tiny"}
    assert "not run: broken (tiny): failed to run: RuntimeError" in format_table(results, missing)
    # optarena's own candidates are not excused: their failure is a bug
    with pytest.raises(RuntimeError, match="no kernel"):
        run_layout("tiny", _tiny_layout(), [Candidate("own", "sgd", lambda ps: _Broken(ps), 12.0)], steps=1,
                   rounds=1, device=torch.device("cpu"), log=lambda _: None)


class _LastOnly(torch.optim.SGD):
    """Moves only its last tensor, as a peer that skips some (a size threshold, one group) would."""

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        p = self.param_groups[0]["params"][-1]
        p.add_(p.grad, alpha=-0.1)


def test_a_candidate_that_moves_only_some_tensors_is_not_timed() -> None:
    """Its GB/s would count every tensor's bytes while it moved a tenth of them."""
    cands = [Candidate("last only", "sgd", lambda ps: _LastOnly(ps, lr=0.1), 12.0, "test-peer"), _moves_after("sgd")]
    results, missing = run_layout("tiny", _tiny_layout(), cands, steps=1, rounds=1, device=torch.device("cpu"),
                                  log=lambda _: None)
    assert [r.label for r in results] == ["sgd"]
    assert [(m.label, m.reason) for m in missing] == [
        ("last only", "its step left 2 of 3 parameter tensors unchanged")]


def test_a_layout_where_every_candidate_is_refused_returns_them_all() -> None:
    cands = [Candidate("frozen", "sgd", lambda ps: _Frozen(ps, lr=0.1), 12.0, "test-peer")]
    results, missing = run_layout("tiny", _tiny_layout(), cands, steps=1, rounds=2, device=torch.device("cpu"),
                                  log=lambda _: None)
    assert results == [] and [m.reason for m in missing] == ["its step did not move the parameters"]


def test_the_table_states_peak_memory_in_the_mib_it_holds() -> None:
    from optarena.speed import Result

    row = Result("tiny", "sgd", "test", 1.0, 1.0, 1.0, 4.0, peak_extra_mb=peak_extra_bytes(
        lambda: torch.empty(2**18)) / 2**20, compile_s=0.0)  # 2**18 fp32 = 1 MiB
    head, _, line = format_table([row]).splitlines()
    assert "peak MiB" in head and "MB" not in head.replace("MiB", "")
    assert line.split()[-2] == "1.0"


def test_missing_peers_are_listed_with_the_reason_in_table_and_json(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from optarena.speed import peers

    monkeypatch.setattr(peers, "PEERS", [
        ("nowhere Lion", "lion", "optarena_no_such_peer", "no-such-peer", lambda m: lambda ps: m.Lion(ps),
         lambda: 20, False),
        ("nowhere AdamW", "adamw", "optarena_no_such_peer", "no-such-peer", lambda m: lambda ps: m.AdamW(ps),
         lambda: 28, False),
        ("torch Adan", "adan", "torch", "torch", lambda m: "torch has no Adan", lambda: 44, False)])
    found, missing = peers.peer_candidates(["lion"])
    assert found == [] and [m.label for m in missing] == ["nowhere Lion", "nowhere AdamW"]  # Adan not asked for
    assert "not installed" in missing[0].reason and "pip install" in missing[0].reason
    out = tmp_path / "speed.json"
    assert main(["speed", "--quick", "--optimizers", "lion,adan", "--paths", "foreach", "--layouts", "200x64",
                 "--rounds", "1", "--json", str(out)]) == 0
    not_run = json.loads(out.read_text())["not_run"]
    assert {m["label"]: m["reason"] for m in not_run}["torch Adan"] == "torch has no Adan"
    assert {m["label"] for m in not_run} == {"nowhere Lion", "nowhere AdamW", "torch Adan"}


def test_compiled_reference_steps_like_the_loop_path() -> None:
    from optarena.speed import own_candidates

    loop, compiled = own_candidates(["lion"], ["loop", "compiled"])[:2]
    assert compiled.label == "lion compiled" and compiled.compiles and compiled.min_bytes == 20
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen) for s in _tiny_layout()]
    grads = [[torch.randn(s.shape, generator=gen) for s in start] for _ in range(3)]
    finals = []
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for cand in (loop, compiled):
        params = [torch.nn.Parameter(s.clone()) for s in start]
        opt = cand.build(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        finals.append(params)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # really compiled, not run eagerly
    assert opt.fused_compile_seconds > 0
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, torch.zeros_like(a))


def test_state_bytes_counts_nested_state_and_tensor_subclasses_once() -> None:
    p = torch.nn.Parameter(torch.zeros(512))
    opt = torch.optim.SGD([p], lr=0.1)
    shared = torch.zeros(10)
    opt.state[p] = {0: {"exp_avg": torch.zeros(512), "steps": [shared, shared]}}  # heavyball keeps dicts per view
    assert state_bytes(opt) == 512 * 4 + 10 * 4
    subclass = pytest.importorskip("torchao.optim.subclass_8bit")
    codes = subclass.OptimState8bit.zeros((512,), True, 256, torch.device("cpu"))
    opt.state[p] = {"exp_avg": codes}
    assert state_bytes(opt) == 512 + 2 * 4 + 256 * 4  # int8 codes, a scale per 256, the shared code table


def test_heavyball_peer_runs_real_steps() -> None:
    pytest.importorskip("heavyball")
    from optarena.speed import peer_candidates

    found, missing = peer_candidates(["lion"])
    by_label = {c.label: c for c in found}
    assert "heavyball Lion" in {m.label for m in missing} or "heavyball Lion" in by_label  # 3.2 has none
    cands = [by_label["heavyball AdamW"], _moves_after("after heavyball")]
    results, failed = run_layout("tiny", [(32, 32), (16,)], cands, steps=1, rounds=2, device=torch.device("cpu"),
                                 log=lambda _: None)
    assert failed == []
    heavyball = next(r for r in results if r.label == "heavyball AdamW")
    assert heavyball.grads_restored and heavyball.state_bytes_per_param == pytest.approx(8.0, abs=0.05)  # + step


@pytest.mark.parametrize("flag, value, says", [
    ("--steps", "0", "argument --steps: expected a positive integer, got '0'"),
    ("--steps", "-1", "argument --steps: expected a positive integer, got '-1'"),
    ("--rounds", "0", "argument --rounds: expected a positive integer, got '0'"),
    ("--rounds", "-2", "argument --rounds: expected a positive integer, got '-2'"),
    ("--threads", "0", "argument --threads: expected a positive integer up to 1024, got '0'"),
    ("--threads", "-3", "argument --threads: expected a positive integer up to 1024, got '-3'"),
    ("--threads", "99999999999", "argument --threads: expected a positive integer up to 1024"),
    ("--optimizers", "", "argument --optimizers: expected comma-separated names"),
    ("--optimizers", "lion,adan,lion", "argument --optimizers: lion named twice"),
    ("--paths", ",", "argument --paths: expected comma-separated names"),
    ("--paths", "loop,loop", "argument --paths: loop named twice"),
    ("--layouts", "", "argument --layouts: expected comma-separated names"),
    ("--optimizers", "lion,muon", "argument --optimizers: muon: a torch.optim optimizer; optarena speed times "
                                  "optarena's own (choose from "),
    ("--optimizers", "adamw", "argument --optimizers: adamw: torch's AdamW is always timed, as the baseline"),
    ("--json", "", "argument --json: expected a file path, got ''"),
    ("--device", "foo", "argument --device: expected cpu or cuda[:N], got 'foo'"),
    ("--device", "meta", "argument --device: expected cpu or cuda[:N], got 'meta'"),
])
def test_speed_refuses_bad_values_naming_the_flag(capsys: pytest.CaptureFixture[str], flag: str, value: str,
                                                  says: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["speed", "--quick", "--no-peers", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_speed_refuses_a_json_path_it_cannot_write_before_timing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    for path, says in ((tmp_path, "is a directory"), (tmp_path / "no" / "x.json", "does not exist"),
                       (tmp_path / "a-file" / "x.json", f"its folder {tmp_path / 'a-file'} is a file, not a folder")):
        with pytest.raises(SystemExit) as info:
            main(["speed", "--quick", "--no-peers", "--json", str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --json: {str(path)!r}" in err and says in err, err
    assert capsys.readouterr().out == ""  # nothing was timed


def test_speed_json_keeps_finished_layouts_when_a_later_one_is_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from optarena.speed import cli

    out = tmp_path / "speed.json"
    out.write_text("an older run")  # replaced
    real = cli.run_layout

    def interrupted_on_second(layout: str, *args: object, **kwargs: object) -> object:
        if layout == "200x64":
            raise KeyboardInterrupt
        return real(layout, *args, **kwargs)

    monkeypatch.setattr(cli, "run_layout", interrupted_on_second)
    # Ctrl-C: exit 130 with the finished layouts' table and one line, not a traceback
    try:
        code = main(["speed", "--quick", "--no-peers", "--optimizers", "lion", "--paths", "foreach", "--layouts",
                     "20x2K,200x64", "--rounds", "1", "--steps", "1", "--json", str(out)])
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole test session
        pytest.fail("Ctrl-C escaped optarena speed as a traceback")
    assert code == 130
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1] == f"optarena speed: interrupted; {out} keeps the finished layouts"
    table = printed.out.split("compile s")[-1]
    assert "20x2K     lion foreach" in table and "200x64" not in table
    data = json.loads(out.read_text())
    assert {r["layout"] for r in data["results"]} == {"20x2K"}
    assert all(r["bandwidth_pct"] > 0 for r in data["results"])
    assert data["meta"]["bandwidth_gb_s"] == max(data["meta"]["bandwidth_readings_gb_s"]) > 0
    assert list(tmp_path.iterdir()) == [out]  # no partial file left


def test_bandwidth_is_measured_on_the_device_that_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    from optarena.speed import cli

    seen = []

    def bandwidth(numel: int, repeats: int = 9, device: object = "cpu") -> float:
        seen.append(torch.device(device))
        return 1.0

    monkeypatch.setattr(cli, "measure_bandwidth", bandwidth)
    assert main(["speed", "--quick", "--no-peers", "--optimizers", "lion", "--paths", "foreach", "--layouts",
                 "200x64", "--rounds", "1", "--steps", "1", "--device", "cpu"]) == 0
    assert seen == [torch.device("cpu")] * 2
    from optarena.speed import measure_bandwidth

    assert measure_bandwidth(1024, repeats=1, device=torch.device("cpu")) > 0


def test_an_8bit_path_an_optimizer_does_not_take_is_listed_with_the_reason() -> None:
    from optarena.speed import candidates

    cands, missing = candidates(["amos", "lion"], ["fused-int8"], peers=False)
    assert [c.label for c in cands if c.source == "optarena"] == ["lion fused-int8"]
    assert [(m.label, m.reason) for m in missing] == [("amos fused-int8",
                                                       "it takes no 8-bit state (state_dtype='int8')")]
