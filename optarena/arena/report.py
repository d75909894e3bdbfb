"""The report: ``results.csv`` (every run), PNG plots, ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import platform
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .claims import ClaimResult, evaluate_claims
from .plan import point_key
from .results import CellSummary, ResultSet, median
from .storage import FAILURES


def md_escape(text: str) -> str:
    """``text`` safe inside Markdown (and the HTML a Markdown viewer makes of it): no tags, no table breaks."""
    return html.escape(text, quote=False).replace("|", "\\|")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it over ``path``: a full disk or a crash leaves
    the previous file (or none), never a truncated one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(map(md_escape, self.headers)) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(md_escape(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _metric(summary: CellSummary) -> str:
    if summary.metric_median is None:
        if summary.diverged or (summary.plan.chosen_lr is None and summary.tuning_diverged):
            return "diverged"
        failed = {r.state for r in summary.finals if r.state in FAILURES}
        return " / ".join(sorted(failed)) if failed else "–"
    text = _num(summary.metric_median)
    if summary.runs > 1:
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
        lr = _num(s.plan.chosen_lr, ".3g") + (" (edge)" if s.plan.at_edge else "")
        rows.append([task.name, str(cell.batch_size), cell.optimizer, lr, _metric(s), str(s.runs),
                     f"{s.diverged}/{s.runs} (tuning {s.tuning_diverged})",
                     f"{s.reached}/{s.runs}" if task.target is not None else "no target",
                     _num(s.steps_to_target, ".0f"), _num(s.seconds_to_target, ".2f"), _num(s.opt_step_ms, ".3f"),
                     _num(s.fwd_bwd_ms, ".3f"), _num(s.state_bytes_per_param, ".2f"), _num(s.peak_memory_mb, ".1f")])
    return Table(headers, rows)


def claims_table(claims: list[ClaimResult]) -> Table:
    return Table(["claim", "source", "measured here", "verdict"],
                 [[c.claim, c.source, c.measured, c.verdict] for c in claims])


def tasks_table(results: ResultSet) -> Table:
    rows = []
    for task in results.tasks.values():
        direction = "higher" if task.higher_is_better else "lower"
        rows.append([task.name, f"{task.metric} ({direction} is better)", _num(task.target), str(task.steps),
                     ", ".join(map(str, results.config.batch_sizes_for(task))), task.description])
    return Table(["task", "metric", "target", "steps", "batch sizes", "what it probes"], rows)


def write_csv(results: ResultSet, path: Path) -> None:
    fields = ["task", "batch_size", "optimizer", "lr", "seed", "state", "chosen", "final_metric", "best_metric",
              "diverged_at", "steps", "steps_to_target", "seconds_to_target", "train_seconds", "opt_step_ms",
              "fwd_bwd_ms", "state_bytes", "params", "peak_memory_mb", "trial", "worker", "host", "error"]
    write_atomically(path, lambda partial: _write_rows(results, partial, fields))


def _write_rows(results: ResultSet, path: Path, fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for record in results.records:
            chosen = results.summaries[record.cell.study_name].plan.chosen_lr
            row = {"task": results.task(record.cell).name, "batch_size": record.cell.batch_size,
                   "optimizer": record.cell.optimizer, "lr": record.lr, "seed": record.seed, "state": record.state,
                   "chosen": chosen is not None and point_key(record.lr, 0) == point_key(chosen, 0),
                   "trial": record.trial_number, "worker": record.worker, "host": record.host,
                   "error": record.error.strip().splitlines()[-1] if record.error else ""}
            if record.result is not None:
                r = record.result
                row.update({k: getattr(r, k) for k in ("final_metric", "best_metric", "diverged_at", "steps",
                                                       "steps_to_target", "seconds_to_target", "train_seconds",
                                                       "opt_step_ms", "fwd_bwd_ms", "state_bytes", "params",
                                                       "peak_memory_mb")})
            writer.writerow(row)


# ---------------------------------------------------------------------------------------------------- plots
def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _plots(results: ResultSet, out: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(results.config.optimizers)}
    made: list[tuple[str, Path]] = []

    def save(fig, name: str, title: str) -> None:
        path = out / name
        fig.tight_layout()
        write_atomically(path, lambda partial: fig.savefig(partial, dpi=90, format="png"))
        plt.close(fig)
        made.append((title, path))

    headline = results.headline_cells()
    for spec, task in results.tasks.items():
        cells = [c for c in headline if c.task == spec]
        # loss and metric curves, median over seeds with a min–max band
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for cell in cells:
            for ax, (steps_attr, values_attr) in zip(axes, [("loss_steps", "train_loss"),
                                                            ("eval_steps", "eval_metric")]):
                steps, mid, low, high = results.median_curve(cell, steps_attr, values_attr)
                if steps:
                    ax.plot(steps, mid, label=cell.optimizer, color=colours[cell.optimizer])
                    ax.fill_between(steps, low, high, alpha=0.2, color=colours[cell.optimizer])
        axes[0].set(xlabel="step", ylabel="training loss", title=f"{task.name}: training loss")
        axes[1].set(xlabel="step", ylabel=task.metric, title=f"{task.name}: {task.metric}")
        if not task.higher_is_better and all(v > 0 for line in axes[0].get_lines() for v in line.get_ydata()):
            axes[0].set_yscale("log")
        _legend(axes[1])
        save(fig, f"curves_{task.name}.png", f"{task.name}: curves (median and range over seeds, chosen lr)")

        # sensitivity: final metric against learning rate, seed 0
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for cell in cells:
            runs = sorted((r for r in results.records_of(cell) if r.seed == 0), key=lambda r: r.lr)
            ok = [(r.lr, r.metric) for r in runs if r.metric is not None]
            bad = [r.lr for r in runs if r.metric is None]
            if ok:
                ax.plot(*zip(*ok), "o-", label=cell.optimizer, color=colours[cell.optimizer])
            if bad:
                y = ax.get_ylim()[0] if ok else 0
                ax.plot(bad, [y] * len(bad), "x", color=colours[cell.optimizer], markersize=9)
            chosen = results.summaries[cell.study_name].plan.chosen_lr
            match = [m for lr, m in ok if chosen is not None and point_key(lr, 0) == point_key(chosen, 0)]
            if match:
                ax.plot([chosen], match, "*", color=colours[cell.optimizer], markersize=14)
        ax.set(xscale="log", xlabel="peak learning rate", ylabel=task.metric,
               title=f"{task.name}: sensitivity (seed 0; ★ chosen, × diverged)")
        _legend(ax)
        save(fig, f"lr_{task.name}.png", f"{task.name}: final {task.metric} against learning rate")

        sizes = results.config.batch_sizes_for(task)
        if len(sizes) > 1:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            for optimizer in results.config.optimizers:
                points = [(bs, s.metric_median) for bs in sizes
                          if (s := results.summary(spec, optimizer, bs)) and s.metric_median is not None]
                if points:
                    ax.plot(*zip(*points), "o-", label=optimizer, color=colours[optimizer])
            ax.set(xscale="log", xlabel="batch size", ylabel=task.metric,
                   title=f"{task.name}: {task.metric} against batch size (lr tuned per size)")
            _legend(ax)
            save(fig, f"batch_{task.name}.png", f"{task.name}: batch-size sweep")

        if task.surface is not None:
            fig, ax = plt.subplots(figsize=(5.5, 4.5))
            paths = [(c.optimizer, r.result.trajectory) for c in cells for r in results.summaries[c.study_name].finals
                     if r.seed == 0 and r.result is not None and r.result.trajectory]
            points = [p for _, path in paths for p in path if all(map(math.isfinite, p))]
            xs, ys = [p[0] for p in points] or [-2, 2], [p[1] for p in points] or [-2, 2]
            pad_x, pad_y = 0.15 * (max(xs) - min(xs)) + 0.5, 0.15 * (max(ys) - min(ys)) + 0.5
            gx = torch.linspace(min(xs) - pad_x, max(xs) + pad_x, 200)
            gy = torch.linspace(min(ys) - pad_y, max(ys) + pad_y, 200)
            mx, my = torch.meshgrid(gx, gy, indexing="xy")
            z = task.surface(mx, my)
            ax.contourf(mx.numpy(), my.numpy(), torch.log1p(z - z.min()).numpy(), levels=30, cmap="Greys")
            for name, path in paths:
                ax.plot([p[0] for p in path], [p[1] for p in path], ".-", markersize=2, linewidth=1,
                        label=name, color=colours[name])
                ax.plot(*path[0], "o", color="black")
            ax.set(title=f"{task.name}: trajectories at the chosen lr (seed 0)", xlabel="x", ylabel="y")
            _legend(ax)
            save(fig, f"trajectory_{task.name}.png", f"{task.name}: optimizer trajectories")

    # time and memory, per task and optimizer
    names = [results.task(c).name for c in headline if c.optimizer == results.config.optimizers[0]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(results.config.optimizers))
    for i, optimizer in enumerate(results.config.optimizers):
        summaries = [results.summaries[c.study_name] for c in headline if c.optimizer == optimizer]
        axes[0].bar([j + i * width for j in range(len(summaries))], [s.opt_step_ms or 0 for s in summaries],
                    width, label=optimizer, color=colours[optimizer])
        # the median over tasks: on a 2-parameter task per-tensor step counters inflate the per-parameter figure
        axes[1].bar([i], [median(s.state_bytes_per_param for s in summaries) or 0], color=colours[optimizer])
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=8)
    axes[0].set(ylabel="optimizer step, ms (median)", title="step time per task")
    if any(b.get_height() > 0 for b in axes[0].patches):
        axes[0].set_yscale("log")
    _legend(axes[0])
    axes[1].set_xticks(range(len(results.config.optimizers)), results.config.optimizers, rotation=30, ha="right")
    axes[1].set(ylabel="bytes of state per parameter", title="optimizer memory (median over tasks)")
    save(fig, "time_memory.png", "Optimizer step time and state memory")
    return made


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


def write_report(results: ResultSet, out: Path, *, wall_seconds: float | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    claims = evaluate_claims(results)
    write_csv(results, out / "results.csv")
    plots = _plots(results, out)
    tables = [("Tasks", tasks_table(results)), ("Summary", summary_table(results)),
              ("Published claims on this workload", claims_table(claims))]
    failed = [r for r in results.records if r.state in FAILURES]

    md = ["# optarena compare", "", md_escape(_setup_line(results, wall_seconds)), "", PROTOCOL, ""]
    for title, table in tables:
        md += [f"## {title}", "", table.markdown(), ""]
    if failed:
        md += ["## Runs that failed", ""] + [
            md_escape(f"- {results.task(r.cell).name} {r.cell.optimizer} lr {r.lr:g} seed {r.seed}, {r.state}: "
                      f"{(r.error or '').strip().splitlines()[-1]}") for r in failed]
        md.append("")
    md += ["## Plots", ""] + [f"### {md_escape(title)}\n\n![{md_escape(title)}]({urllib.parse.quote(path.name)})\n"
                              for title, path in plots]
    write_atomically(out / "report.md", lambda partial: partial.write_text("\n".join(md)))

    body = [f"<h1>optarena compare</h1><p>{html.escape(_setup_line(results, wall_seconds))}</p>",
            f"<p>{html.escape(PROTOCOL)}</p>"]
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


def print_summary(results: ResultSet, paths: dict[str, Path], *, wall_seconds: float | None = None) -> None:
    """The end-of-run summary in the terminal: a narrower summary table than the report's, and the claims."""
    import sys

    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(width=None if sys.stdout.isatty() else 160)
    full = summary_table(results)
    keep = ["task", "batch", "optimizer", "chosen lr", "metric: median [min, max]", "diverged", "reached target",
            "steps to target", "step ms", "state B/param"]
    columns = [full.headers.index(h) for h in keep]
    compact = Table(keep, [[row[i] for i in columns] for row in full.rows])
    claims = claims_table(evaluate_claims(results))
    claims = Table(["claim", "measured here", "verdict"], [[r[0], r[2], r[3]] for r in claims.rows])
    for title, table in [("Summary", compact), ("Published claims on this workload", claims)]:
        rich_table = RichTable(title=title)
        for header in table.headers:
            rich_table.add_column(header, overflow="fold")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)
    console.print(_setup_line(results, wall_seconds))
    console.print(f"report: {paths['html']}  ({paths['markdown'].name}, {paths['csv'].name}, PNG plots)")
