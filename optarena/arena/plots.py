"""The report's PNG plots, each drawn from the same stored runs as the tables beside it."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..atomic import write_atomically
from .plan import point_key, stress_lrs
from .results import ResultSet, median
from .verdict import TAU_MAX, Verdict, profile

SPAN_FOR_LOG = 30.0
"""Positive values spanning more than this ratio get a log axis."""


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _log_if_wide(ax, values: list[float]) -> None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > SPAN_FOR_LOG:
        ax.set_yscale("log")


def _lr_ticks(ax, lrs: list[float]) -> None:
    """Ticks at learning rates that ran, at least 0.3 decades apart (at most about 9), without matplotlib's minor
    labels, which overlap on a log axis spanning less than a decade."""
    from matplotlib.ticker import NullFormatter

    lrs = sorted(set(lrs))
    gap = max(0.3, math.log10(lrs[-1] / lrs[0]) / 8)  # decades between neighbouring labels
    kept = [lrs[0]]
    for lr in lrs[1:]:
        if math.log10(lr / kept[-1]) >= gap:
            kept.append(lr)
    lrs = kept
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(lrs, [f"{lr:.2g}" for lr in lrs], rotation=40, ha="right", fontsize=8)


def make_plots(results: ResultSet, verdict: Verdict, out: Path) -> list[tuple[str, Path]]:
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

    if verdict.ratios_steps:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        taus = [1 + i * (TAU_MAX - 1) / 300 for i in range(301)]
        for ax, (unit, ratios) in zip(axes, [("steps", verdict.ratios_steps), ("seconds", verdict.ratios_seconds)]):
            for name in results.config.optimizers:
                ax.step(taus, [profile(ratios, name, t) for t in taus], where="post", label=name,
                        color=colours[name])
            ax.set(xlabel=f"τ (time to target over the best, in {unit})", ylabel="ρ(τ): fraction of tasks",
                   ylim=(-0.03, 1.03), xlim=(1, TAU_MAX),
                   title=f"Performance profile, {unit} ({len(ratios)} tasks with a target)")
        _legend(axes[0])
        save(fig, "profile.png", "Performance profiles (AlgoPerf): higher and further left is better")

    headline = results.headline_cells()
    stress = {point_key(lr, 0) for lr in stress_lrs()}
    for spec, task in results.tasks.items():
        cells = [c for c in headline if c.task == spec]
        batch = f"batch {results.config.default_batch_size(task)}" if task.batched else "no data to batch"
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        drawn: list[list[float]] = [[], []]
        for cell in cells:
            for i, (steps_attr, values_attr) in enumerate([("loss_steps", "train_loss"),
                                                           ("eval_steps", "eval_metric")]):
                steps, mid, low, high = results.median_curve(cell, steps_attr, values_attr)
                if steps:
                    axes[i].plot(steps, mid, label=cell.optimizer, color=colours[cell.optimizer])
                    axes[i].fill_between(steps, low, high, alpha=0.2, color=colours[cell.optimizer])
                    drawn[i] += low + high
        axes[0].set(xlabel="step", ylabel="training loss", title=f"{task.name} ({batch}): training loss")
        axes[1].set(xlabel="step", ylabel=task.metric, title=f"{task.name} ({batch}): {task.metric}")
        for ax, values in zip(axes, drawn):
            _log_if_wide(ax, values)
        _legend(axes[1])
        save(fig, f"curves_{task.name}.png", f"{task.name}: curves (median and range over seeds, chosen lr, {batch})")

        # sensitivity: final metric against learning rate, seed 0; the tuning grid joined, stress runs apart
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        lrs, values, diverged = [], [], []
        for cell in cells:
            summary = results.summaries[cell.study_name]
            # this comparison's tuning points (a study may also hold another --tune mode's) and stress runs
            grid = {point_key(lr, 0, wd) for lr, wd in summary.plan.tuning}
            runs = sorted((r for r in results.records_of(cell) if r.seed == 0), key=lambda r: r.lr)
            runs = [r for r in runs if point_key(r.lr, 0, r.wd) in grid | stress]
            colour = colours[cell.optimizer]
            tuned = [(r.lr, r.metric) for r in runs if r.metric is not None and point_key(r.lr, 0, r.wd) in grid]
            extra = [(r.lr, r.metric) for r in runs if r.metric is not None and point_key(r.lr, 0, r.wd) not in grid]
            if tuned:  # the grid joined by a line; a search's points (lr and decay both varied) stand alone
                ax.plot(*zip(*tuned), "o-" if summary.plan.tuning_lrs else "o", label=cell.optimizer, color=colour)
            if extra:
                ax.plot(*zip(*extra), "s", mfc="none", color=colour, markersize=7)
            chosen_key = point_key(summary.plan.chosen_lr, 0, summary.plan.chosen_wd) \
                if summary.plan.chosen_lr is not None else None
            chosen = [r.metric for r in runs if r.metric is not None and point_key(r.lr, 0, r.wd) == chosen_key]
            if chosen:
                ax.plot([summary.plan.chosen_lr], chosen[:1], "*", color=colour, markersize=15, mec="black", mew=0.5)
            lrs += [r.lr for r in runs]
            values += [m for _, m in tuned + extra]
            diverged += [(r.lr, colour) for r in runs if r.state == "diverged"]
        _log_if_wide(ax, values)
        if diverged:  # at the losing edge of the axis: a diverged run must never look like the best result
            low, high = ax.get_ylim() if values else (0.0, 1.0)
            edge = low if task.higher_is_better else high
            for lr, colour in diverged:
                ax.plot([lr], [edge], "x", color=colour, markersize=9, mew=2, clip_on=False)
        ax.set(xscale="log", xlabel="peak learning rate", ylabel=task.metric,
               title=f"{task.name} ({batch}): ● grid, □ AdamW-sized stress runs,\n★ chosen, × diverged (seed 0)")
        if lrs:
            _lr_ticks(ax, lrs)
        _legend(ax)
        save(fig, f"lr_{task.name}.png", f"{task.name}: final {task.metric} against learning rate ({batch})")

        sizes = results.config.batch_sizes_for(task)
        if len(sizes) > 1:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            values = []
            for optimizer in results.config.optimizers:
                points = [(bs, s) for bs in sizes
                          if (s := results.summary(spec, optimizer, bs)) and s.metric_median is not None]
                if points:
                    ax.errorbar([bs for bs, _ in points], [s.metric_median for _, s in points],
                                yerr=[[s.metric_median - s.metric_min for _, s in points],
                                      [s.metric_max - s.metric_median for _, s in points]],
                                fmt="o-", capsize=3, label=optimizer, color=colours[optimizer])
                    values += [v for _, s in points for v in (s.metric_min, s.metric_max)]
            _log_if_wide(ax, values)
            ax.set(xscale="log", xlabel="batch size", ylabel=task.metric,
                   title=f"{task.name}: {task.metric} by batch size\n(lr tuned per size; median, range over seeds)")
            ax.set_xticks(list(sizes), [str(b) for b in sizes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            _legend(ax)
            save(fig, f"batch_{task.name}.png", f"{task.name}: batch-size sweep")

        if task.surface is not None:
            _trajectories(results, cells, task, colours, plt, save)

    _time_memory(results, headline, colours, plt, save)
    return made


def _trajectories(results: ResultSet, cells, task, colours, plt, save) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    paths = [(c.optimizer, r.result.trajectory) for c in cells for r in results.summaries[c.study_name].finals
             if r.seed == 0 and r.result is not None and r.result.trajectory]
    points = [p for _, path in paths for p in path if all(map(math.isfinite, p))]
    xs, ys = [p[0] for p in points] or [-2, 2], [p[1] for p in points] or [-2, 2]
    pad_x, pad_y = 0.15 * (max(xs) - min(xs)) + 0.5, 0.15 * (max(ys) - min(ys)) + 0.5
    gx = torch.linspace(min(xs) - pad_x, max(xs) + pad_x, 200)
    gy = torch.linspace(min(ys) - pad_y, max(ys) + pad_y, 200)
    mx, my = torch.meshgrid(gx, gy, indexing="xy")
    z = task.surface(mx, my)
    filled = ax.contourf(mx.numpy(), my.numpy(), torch.log1p(z - z.min()).numpy(), levels=30, cmap="Greys")
    fig.colorbar(filled, ax=ax, label="log(1 + f − min f)")
    for name, path in paths:
        ax.plot([p[0] for p in path], [p[1] for p in path], ".-", markersize=2, linewidth=1, label=name,
                color=colours[name])
        ax.plot(*path[0], "o", color="black")
    ax.set(title=f"{task.name}: trajectories at the chosen lr (seed 0; ● start)", xlabel="x", ylabel="y")
    _legend(ax)
    save(fig, f"trajectory_{task.name}.png", f"{task.name}: optimizer trajectories")


def _time_memory(results: ResultSet, headline, colours, plt, save) -> None:
    optimizers = results.config.optimizers
    # every task any optimizer ran: one that cannot run a task (schedule-free on ultralytics) leaves a gap there
    specs = list(dict.fromkeys(c.task for c in headline))
    names = [results.tasks[spec].name for spec in specs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(optimizers))
    for i, optimizer in enumerate(optimizers):
        cells = [c for c in headline if c.optimizer == optimizer]
        summaries = [results.summaries[c.study_name] for c in cells]
        axes[0].bar([specs.index(c.task) + i * width for c in cells], [s.opt_step_ms or 0 for s in summaries],
                    width, label=optimizer, color=colours[optimizer])
        # the median over tasks: on a 2-parameter task per-tensor step counters inflate the per-parameter figure
        axes[1].bar([i], [median(s.state_bytes_per_param for s in summaries) or 0], color=colours[optimizer])
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right", fontsize=8)
    axes[0].set(ylabel="optimizer step, ms (median)", title="step time per task")
    if any(b.get_height() > 0 for b in axes[0].patches):
        axes[0].set_yscale("log")
    _legend(axes[0])
    axes[1].set_xticks(range(len(optimizers)), optimizers, rotation=30, ha="right")
    axes[1].set(ylabel="bytes of state per parameter", title="optimizer memory (median over tasks)")
    save(fig, "time_memory.png", "Optimizer step time and state memory")
