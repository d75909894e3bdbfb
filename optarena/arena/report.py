"""The report: ``results.csv`` (every run), PNG plots, ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
import math
import platform
import textwrap
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_atomically
from ..info import base_optimizer_info
from .claims import ClaimResult, evaluate_claims
from .plan import BUDGET_PRESETS, point_key
from .plots import make_plots
from .results import METRIC_FORMAT, CellSummary, ResultSet
from .storage import FAILURES
from .task import Task
from .verdict import TAU_MAX, Verdict, compute_verdict

__all__ = ["md_escape", "print_summary", "write_atomically", "write_report"]


def md_escape(text: str) -> str:
    """``text`` safe inside Markdown (and the HTML a Markdown viewer makes of it): no tags, no table breaks."""
    return html.escape(text, quote=False).replace("|", "\\|")


def _md_cell(text: str) -> str:
    """``text`` as one Markdown table cell: a line break (a user task's multi-line description) would end the row."""
    return " ".join(line.strip() for line in md_escape(text).splitlines())


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(map(_md_cell, self.headers)) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _last_line(text: str | None) -> str:
    return next(iter(reversed((text or "").strip().splitlines())), "")


def _num(value: float | None, fmt: str = METRIC_FORMAT) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _metric(summary: CellSummary) -> str:
    """The median (a diverged seed counting as worse than any result) and the range over the seeds with one."""
    if summary.metric_median is None:
        if summary.lost_to_divergence:
            return "diverged"
        failed = {r.state for r in summary.finals if r.state in FAILURES}
        return " / ".join(sorted(failed)) if failed else "–"
    text = _num(summary.metric_median)
    if summary.with_result > 1:  # a spread was measured
        text += f" [{_num(summary.metric_min)}, {_num(summary.metric_max)}]"
    return text


def summary_table(results: ResultSet) -> Table:
    headers = ["task", "batch", "optimizer", "chosen lr", "metric: median [min, max]", "seeds", "diverged",
               "reached target", "steps to target", "s to target", "step ms", "fwd+bwd ms", "state B/param",
               "peak MiB"]
    rows = []
    for cell in results.cells:
        s = results.summaries[cell.study_name]
        task = results.task(cell)
        lr = _num(s.plan.chosen_lr, ".3g") + (" (edge)" if s.plan.at_edge else "") + (
            f", wd {s.plan.chosen_wd:.3g}" if s.plan.chosen_wd is not None else "")
        rows.append([task.name, _batch(task, cell.batch_size), cell.optimizer, lr, _metric(s), str(s.runs),
                     f"{s.diverged}/{s.runs} (tuning {s.tuning_diverged})",
                     f"{s.reached}/{s.runs}" if task.target is not None else "no target",
                     _num(s.steps_to_target, ".0f"), _num(s.seconds_to_target, ".2f"), _num(s.opt_step_ms, ".3f"),
                     _num(s.fwd_bwd_ms, ".3f"), _num(s.state_bytes_per_param, ".2f"), _num(s.peak_memory_mb, ".1f")])
    return Table(headers, rows)


def claims_table(claims: list[ClaimResult]) -> Table:
    return Table(["claim", "source", "measured here", "verdict", "independent findings (context, not the verdict)"],
                 [[c.claim, c.source, c.measured, c.verdict, c.context] for c in claims])


def tasks_verdict_table(verdict: Verdict) -> Table:
    rows = []
    for t in verdict.tasks:
        if not t.ranking:
            rows.append([t.task, "–", "–", "no result", ""])
            continue
        margin = f"{t.margin_text} vs {t.runner_up}" if t.margin is not None else "–"
        rows.append([t.task, t.winner, margin, f"tie ({t.difference})" if t.is_tie else t.difference,
                     ", ".join(t.tied) if len(t.tied) > 1 else ""])
    return Table(["task", "best median", "margin over the runner-up", "difference to the runner-up",
                  "tied with the best"], rows)


def standings_table(verdict: Verdict) -> Table:
    rows = []
    for s in verdict.standings.values():
        rows.append([s.name, _num(s.score_steps, ".2f"), _num(s.score_seconds, ".2f"), f"{s.first}/{s.tasks}",
                     _num(s.plateau_decades, ".1f"), _num(s.state_bytes_per_param, ".2f"),
                     _num(s.peak_memory_mb, ".1f"), ", ".join(s.never_learned) or "–"])
    return Table(["optimizer", "score (steps)", "score (s)", "first or tied", "lr plateau (decades)",
                  "state B/param", "peak MiB", "never learned on"], rows)


SCORING = ("Score: the AlgoPerf performance-profile score, the area under ρ(τ) (the fraction of tasks on which the "
           "optimizer reached the task's target within τ times the fastest optimizer's time, a miss counting as "
           f"never) over τ from 1 to {TAU_MAX:g}, normalised so that 1 means first to every target; in steps, and in "
           "seconds of training including compilation. First or tied: tasks where its median is the best or tied "
           "with the best (inside the seed spread, or equal as printed). lr plateau: the width, in decades, of the "
           "learning rates around the chosen one (the tuning grid, and the AdamW-sized stress runs beyond its edges; "
           "seed 0) whose result is no worse than the chosen setting's worst seed (median over the tasks where every "
           "seed of the chosen setting learned; 0 when only the chosen lr qualifies; – after --tune lr,weight_decay, "
           "whose points form no grid). Memory: medians over tasks.")


def _batch(task: Task, batch_size: int) -> str:
    """A batch size as printed: "–" for a task without data to batch (the 2-D surfaces)."""
    return str(batch_size) if task.batched else "–"


def tasks_table(results: ResultSet) -> Table:
    rows = []
    for task in results.tasks.values():
        direction = "higher" if task.higher_is_better else "lower"
        rows.append([task.name, f"{task.metric} ({direction} is better)", _num(task.target), str(task.steps),
                     ", ".join(_batch(task, b) for b in results.config.batch_sizes_for(task)), task.description])
    return Table(["task", "metric", "target", "steps", "batch sizes", "what it probes"], rows)


def write_csv(results: ResultSet, path: Path) -> None:
    fields = ["task", "batch_size", "optimizer", "lr", "weight_decay", "seed", "state", "chosen", "final_metric",
              "best_metric", "diverged_at", "steps", "steps_to_target", "seconds_to_target", "train_seconds",
              "opt_step_ms", "fwd_bwd_ms", "state_bytes", "params", "peak_memory_mb", "trial", "worker", "host",
              "planned", "error"]
    write_atomically(path, lambda partial: _write_rows(results, partial, fields))


def _write_rows(results: ResultSet, path: Path, fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for record in results.records:
            plan = results.summaries[record.cell.study_name].plan
            chosen = point_key(plan.chosen_lr, 0, plan.chosen_wd) if plan.chosen_lr is not None else None
            row = {"task": results.task(record.cell).name, "batch_size": record.cell.batch_size,
                   "optimizer": record.cell.optimizer, "lr": record.lr, "seed": record.seed, "state": record.state,
                   "weight_decay": "" if record.wd is None else record.wd,
                   "chosen": point_key(record.lr, 0, record.wd) == chosen,
                   "trial": record.trial_number, "worker": record.worker, "host": record.host,
                   "planned": results.in_plan(record), "error": _last_line(record.error)}
            if record.result is not None:
                r = record.result
                row.update({k: getattr(r, k) for k in ("final_metric", "best_metric", "diverged_at", "steps",
                                                       "steps_to_target", "seconds_to_target", "train_seconds",
                                                       "opt_step_ms", "fwd_bwd_ms", "state_bytes", "params",
                                                       "peak_memory_mb")})
            writer.writerow(row)


# --------------------------------------------------------------------------------------------------- writers
_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
        "th{background:#f0f0f0}img{max-width:100%;margin:0.5em 0}")


def _setup_line(results: ResultSet, wall_seconds: float | None) -> str:
    c = results.config
    wall = f"; wall time {wall_seconds:.0f} s" if wall_seconds is not None else ""
    return (f"budget {c.budget}; {c.seeds} seed(s) per chosen setting; optimizers {', '.join(c.optimizers)}; "
            f"{len(results.records)} runs stored in {c.storage.split('://')[0]}{wall}; torch {torch.__version__}, "
            f"{platform.machine()}, {c.workers} worker(s) × {c.threads_per_worker} thread(s)")


PROTOCOL = ("Every optimizer gets the same initial weights and batch order per seed. Its peak learning rate is tuned "
            "on seed 0 over a half-decade grid around its documented default (extended when the best point is on "
            "an edge), chosen on the final validation metric, then re-run over the remaining seeds. Schedule: "
            "cosine decay to 0, no warm-up. A run whose loss turns non-finite or grows 10× is recorded as diverged.")


SEARCH = ("Tuning (--tune lr,weight_decay): instead of the lr grid, {trials} runs on seed 0 per optimizer at the same "
          "quasi-random points of a declared space, lr in default·10^[−1.5, 1.5] and AdamW-scale weight decay in "
          "base·10^[−1, 1] (base: the task's decay or 0.01), each optimizer getting its published translation of the "
          "decay; the best on the final validation metric is re-run over the remaining seeds.")


def protocol(results: ResultSet) -> str:
    """The protocol paragraph, with the exceptions the roster brings (schedule-free optimizers)."""
    text = PROTOCOL
    skipped = results.config.not_run()
    if skipped:
        text += " Not run: " + "; ".join(f"{o} on {results.tasks[spec].name} ({why})" for spec, o, why in skipped) + "."
    if "weight_decay" in results.config.tune:
        text += " " + SEARCH.format(trials=BUDGET_PRESETS[results.config.budget].search_trials)
        undecayed = [n for n in results.config.optimizers
                     if (t := base_optimizer_info(n).translation) is not None and t.wd_factor == 0]
        if undecayed:
            verb = "translates" if len(undecayed) == 1 else "translate"
            text += (f" {', '.join(undecayed)} {verb} every decay to 0 (the decay is built into the rule): the "
                     "search varies only their lr.")
    own = [f"{t.name}: {t.schedule}" for t in results.tasks.values() if t.schedule]
    if own:
        text += " Tasks that keep their framework's schedule instead: " + "; ".join(own) + "."
    constant = [n for n in results.config.optimizers if base_optimizer_info(n).schedule == "constant"]
    if constant:
        text += (f" Exception: {', '.join(constant)}, designed for a constant learning rate, get a linear warm-up "
                 "over the first 5 % of the steps and then a constant lr.")
    for name in results.config.optimizers:
        if base_optimizer_info(name).run_length_kwargs:
            text += f" {name} gets {' = '.join(base_optimizer_info(name).run_length_kwargs)} = the run's steps."
    modal = [n for n in results.config.optimizers if base_optimizer_info(n).train_eval_modes]
    if modal:
        text += (f" {', '.join(modal)} train in optimizer.train() mode and are evaluated in optimizer.eval() mode "
                 "(at the averaged weights).")
    return text


def write_report(results: ResultSet, out: Path, *, wall_seconds: float | None = None, verdict: Verdict | None = None,
                 claims: list[ClaimResult] | None = None) -> dict[str, Path]:
    """Write every report file; ``verdict`` and ``claims`` are computed from ``results`` unless given."""
    out.mkdir(parents=True, exist_ok=True)
    claims = evaluate_claims(results) if claims is None else claims
    verdict = verdict or compute_verdict(results)
    write_csv(results, out / "results.csv")
    plots = make_plots(results, verdict, out)
    top = [("Verdict per task", tasks_verdict_table(verdict)), ("Across tasks", standings_table(verdict))]
    tables = [("Published claims on this workload", claims_table(claims)), ("Tasks", tasks_table(results)),
              ("Summary", summary_table(results))]
    failed = results.failures
    setup = _setup_line(results, wall_seconds)

    md = ["# optarena compare", "", f"**{md_escape(verdict.pick)}**", ""]
    md += [line for title, table in top for line in (f"## {title}", "", table.markdown(), "")]
    md += [md_escape(SCORING), "", md_escape(setup), "", md_escape(protocol(results)), ""]
    for title, table in tables:
        md += [f"## {title}", "", table.markdown(), ""]
    if failed:
        md += ["## Runs that failed", ""] + [
            md_escape(f"- {results.task(r.cell).name} {r.cell.optimizer} lr {r.lr:g} seed {r.seed}, {r.state}: "
                      f"{_last_line(r.error)}") for r in failed]
        md.append("")
    md += ["## Plots", ""] + [f"### {md_escape(title)}\n\n![{md_escape(title)}]({urllib.parse.quote(path.name)})\n"
                              for title, path in plots]
    write_atomically(out / "report.md", lambda partial: partial.write_text("\n".join(md)))

    body = [f"<h1>optarena compare</h1><p><b>{html.escape(verdict.pick)}</b></p>"]
    body += [f"<h2>{html.escape(title)}</h2>{table.html()}" for title, table in top]
    body += [f"<p>{html.escape(SCORING)}</p><p>{html.escape(setup)}</p><p>{html.escape(protocol(results))}</p>"]
    for title, table in tables:
        body.append(f"<h2>{html.escape(title)}</h2>{table.html()}")
    if failed:
        items = "".join(f"<li>{html.escape(results.task(r.cell).name)} {html.escape(r.cell.optimizer)} lr {r.lr:g} "
                        f"seed {r.seed}, {r.state}<pre>{html.escape(r.error or '')}</pre></li>" for r in failed)
        body.append(f"<h2>Runs that failed</h2><ul>{items}</ul>")
    body.append("<h2>Plots</h2>")
    for title, path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>optarena compare</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")
    write_atomically(out / "report.html", lambda partial: partial.write_text(page))
    return {"html": out / "report.html", "markdown": out / "report.md", "csv": out / "results.csv",
            **{path.stem: path for _, path in plots}}


TERMINAL_WIDTH = 80


def terminal_summary(results: ResultSet, paths: dict[str, Path], *, wall_seconds: float | None = None,
                     verdict: Verdict | None = None, claims: list[ClaimResult] | None = None) -> str:
    """The end-of-run summary as plain text no wider than ``TERMINAL_WIDTH`` (bar a long report path): the pick,
    the verdict per task, the standings, each task's results in a block, and the claims."""
    verdict = verdict or compute_verdict(results)

    def wrap(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(text, TERMINAL_WIDTH, initial_indent=indent,
                             subsequent_indent=" " * len(indent) if indent else "  ")

    lines = wrap(verdict.pick) + [""]
    for t in verdict.tasks:
        lines += wrap(t.sentence(), "- ")
    standings = standings_table(verdict)
    lines += ["", *_fit(["optimizer", "score", "score s", "first", "lr dec", "B/param"],
                        [row[:6] for row in standings.rows])]
    lines += wrap("score: AlgoPerf profile score in steps and in seconds (1 = first to every target); first: tasks "
                  "with the best final result or tied for it; lr dec: decades of learning rate around the chosen "
                  "one with results no worse than its worst seed.")
    for spec, task in results.tasks.items():
        for batch in results.config.batch_sizes_for(task):
            rows = []
            for optimizer in results.config.optimizers:
                s = results.summary(spec, optimizer, batch)
                if s is None:
                    continue
                lr = _num(s.plan.chosen_lr, ".2g") + ("*" if s.plan.at_edge else "") + (
                    f", wd {s.plan.chosen_wd:.2g}" if s.plan.chosen_wd is not None else "")
                metric = _metric(s)
                rows.append([optimizer, lr, metric, f"{s.reached}/{s.runs}" if task.target is not None else "–",
                             _num(s.steps_to_target, ".0f")])
            direction = "higher" if task.higher_is_better else "lower"
            batched = f", batch {batch}" if task.batched else ""
            lines += ["", *wrap(f"{task.name}{batched}: {task.metric} ({direction} is better), median [min, max] over "
                                f"seeds; * chosen lr on the grid's edge")]
            lines += _fit(["optimizer", "lr", "metric", "reached", "steps"], rows)
    lines += ["", "Published claims on this workload:"]
    for claim in claims if claims is not None else evaluate_claims(results):
        lines += wrap(f"[{claim.verdict}] {claim.claim}", "- ") + wrap(f"measured: {claim.measured}", "    ")
    lines += ["", *wrap(_setup_line(results, wall_seconds)),
              f"report: {paths['html']}", f"  ({paths['markdown'].name}, {paths['csv'].name}, PNG plots)"]
    return "\n".join(lines)


def _fit(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned columns; where they would not fit ``TERMINAL_WIDTH``, one block of ``header: value`` per row."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if sum(widths) + 2 * (len(widths) - 1) <= TERMINAL_WIDTH:
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]
    lines = []
    for row in rows:
        text = row[0] + ": " + "; ".join(f"{h} {v}" for h, v in zip(headers[1:], row[1:]))
        lines += textwrap.wrap(text, TERMINAL_WIDTH, subsequent_indent="    ")
    return lines


def print_summary(results: ResultSet, paths: dict[str, Path], *, wall_seconds: float | None = None,
                  verdict: Verdict | None = None, claims: list[ClaimResult] | None = None) -> None:
    print(terminal_summary(results, paths, wall_seconds=wall_seconds, verdict=verdict, claims=claims))
