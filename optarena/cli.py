"""The ``optarena`` command. With no arguments it runs the built-in default job: ``optarena compare`` on the quick
suite (every built-in task, AdamW as the baseline), writing its report to ``./optarena-report``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from .arena.plan import BUDGET_PRESETS, DEFAULT_OPTIMIZERS
from .arena.task import BUDGETS
from .registry import base_optimizer_info, get_optimizer_info, list_optimizers
from .validation import positive_int_arg


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:  # an empty list would quietly mean the default roster
        raise argparse.ArgumentTypeError(f"expected comma-separated optimizer names (`optarena list`), got {text!r}")
    for name in names:
        try:
            base_optimizer_info(name)
        except ValueError as err:  # argparse shows an ArgumentTypeError's message, not a ValueError's
            raise argparse.ArgumentTypeError(str(err)) from None
    return names


def _demo_names(text: str) -> list[str]:
    """As ``_names``, less those only ultralytics' trainer builds: refused before the demo trains the others."""
    names = _names(text)
    for name in names:
        if base_optimizer_info(name).source == "ultralytics":
            raise argparse.ArgumentTypeError(f"{name!r} is built by ultralytics' trainer only (compare it on an "
                                             "ultralytics workload); the demo trains a plain MLP")
    return names


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 2**63 - 1:  # torch.Generator.manual_seed(seed + 1) overflows past this
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {2**63 - 2}, got {text!r}")
    return value


def _metric_name(text: str) -> str:
    if not text.strip() or ":" in text:
        raise argparse.ArgumentTypeError(f"expected a metric name without ':' (it separates a task spec's parts), "
                                         f"got {text!r}")
    return text


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


#: Workload options the command line sets (``--epochs 5`` → ``:epochs=5``), per workload prefix; a spec's own
#: ``key=value`` wins.
WORKLOAD_FLAGS = {"ultralytics": ("epochs", "imgsz"), "lightning": ("metric", "higher_is_better", "steps"),
                  "hf": ("metric", "higher_is_better", "steps")}


def workload_specs(args: argparse.Namespace) -> tuple[str, ...]:
    """The task specs of ``--tasks`` and ``--task``, with the workload flags folded into the workload specs (so a
    spec, and the studies keyed by it, carry everything that shapes its runs)."""
    from .arena.workloads import is_workload, split_spec

    tasks: tuple[str, ...] = ()
    if args.tasks is not None:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        if not tasks:
            raise ValueError(f"Invalid --tasks: {args.tasks!r} (no task named; leave --tasks out for every built-in "
                             "task)")
    specs = []
    for spec in tasks + tuple(args.task):
        if is_workload(spec):
            prefix, _, options = split_spec(spec)
            for key in WORKLOAD_FLAGS[prefix]:
                value = getattr(args, key, None)
                if value is not None and key not in options:
                    spec += f":{key}={str(value).lower() if isinstance(value, bool) else value}"
        specs.append(spec)
    prefixes = {spec.partition(":")[0] for spec in specs if is_workload(spec)}
    for key in dict.fromkeys(k for keys in WORKLOAD_FLAGS.values() for k in keys):
        value = getattr(args, key, None)
        takers = [prefix for prefix, keys in WORKLOAD_FLAGS.items() if key in keys]
        if value is not None and not prefixes.intersection(takers):  # it would shape nothing: say so
            flag = "--" + key.replace("_", "-")
            shown = "given" if isinstance(value, bool) else repr(value)
            raise ValueError(f"Invalid {flag}: {shown} (it sets {' and '.join(takers)} workloads only, --task "
                             f"{takers[0]}:..., and no such workload is compared; a task of your own sets it in the "
                             "Task it returns)")
    return tuple(specs)


def _cmd_compare(args: argparse.Namespace) -> int:
    from . import arena
    from .arena.compare import failure_summary
    from .arena.storage_urls import StorageError
    from .arena.workers import TaskChanged, Terminated, WorkersLost

    tasks = workload_specs(args)
    workers = {} if args.workers is None else {"workers": args.workers}
    config = arena.CompareConfig(optimizers=tuple(args.optimizers or ()), tasks=tasks,
                                 budget=args.budget, seeds=args.seeds, batch_sizes=args.batch_sizes, out=args.out,
                                 storage=args.storage, device=args.device, threads=args.threads,
                                 stale_after=args.stale_after, run_timeout=args.run_timeout,
                                 tune=tuple(t.strip() for t in args.tune.split(",")), **workers)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        results = arena.run_compare(config)
    except Terminated:
        print("optarena: terminated (SIGTERM); the runs in progress were recorded as interrupted and finished runs are "
              "stored. Run the same command again to resume.", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("\noptarena: interrupted; finished runs are stored. Run the same command again to resume.")
        return 130
    except TaskChanged as err:
        print(f"optarena: {err}.", file=sys.stderr)
        return 1
    except WorkersLost as err:
        print(f"optarena: {err}. Finished runs are stored; run the same command again to resume.", file=sys.stderr)
        return 1
    except StorageError as err:
        print(f"optarena: {err}; finished runs are stored. Run the same command again to resume.", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    failures = failure_summary(results) if results is not None else None
    if failures:
        print(f"optarena: {failures}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM in the command (a batch scheduler's kill, ``timeout``): stop as Ctrl-C does; a second one, while the
    workers record their interrupted runs, is ignored so as not to cut that short."""
    from .arena.workers import Terminated

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def _cmd_tasks(args: argparse.Namespace) -> int:
    from .arena.catalog import BUILTIN_TASKS, WORKLOAD_TASKS, load_task

    print(f"{'name':<16} {'metric':<14} {'target':>8} {'steps':>6} {'batch':>6}  description ({args.budget} budget)")
    for name in [*BUILTIN_TASKS, *WORKLOAD_TASKS]:
        task = load_task(name, args.budget)
        target = "–" if task.target is None else f"{task.target:g}"
        sizes = ",".join(map(str, task.all_batch_sizes)) if task.batched else "–"
        print(f"{name:<16} {task.metric:<14} {target:>8} {task.steps:>6} {sizes:>6}  {task.description}")
    print("\nA user task: --task package.module:function (or path/to/file.py:function) returning optarena.arena.Task;"
          "\na workload: --task ultralytics:MODEL.yaml:DATA.yaml, lightning:pkg.module:Module[:DataModule], "
          "hf:pkg.module:function")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    results = run_demo(args.optimizers, epochs=args.epochs, seed=args.seed)
    return 1 if any(r.diverged for r in results) else 0


def _cmd_list(args: argparse.Namespace) -> int:
    import textwrap

    from .info import LOOKAHEAD_PREFIX

    names = list_optimizers()
    width = max(map(len, names))
    print(f"{'name':<{width}} {'source':<12} {'default lr':>10} {'state B/param':>13}  description")
    for name in names:
        info = get_optimizer_info(name)
        print(f"{name:<{width}} {info.source:<12} {info.default_lr:>10g} {info.state_bytes_per_param:>13g}  "
              f"{info.description}")
    wrapped = ", ".join(LOOKAHEAD_PREFIX + n for n in names if get_optimizer_info(n).source != "schedulefree")
    print("\n" + textwrap.fill(f"Each of these inside Lookahead (k=5, alpha=0.5), by the {LOOKAHEAD_PREFIX} prefix: "
                              f"{wrapped}", 118))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optarena", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="train an MLP on scikit-learn's digits with several optimizers")
    demo.add_argument("--optimizers", type=_demo_names, default=["adamw", "lion"],
                      help="comma-separated names (default: adamw,lion)")
    demo.add_argument("--epochs", type=positive_int_arg(), default=30,
                      help="passes over the training split (default: 30)")
    demo.add_argument("--seed", type=_seed, default=0, help="weights, split and batch order (default: 0)")
    demo.set_defaults(func=_cmd_demo)
    listing = commands.add_parser("list", help="list the registered optimizers")
    listing.set_defaults(func=_cmd_list)

    compare = commands.add_parser("compare", help="fair side-by-side comparison with tuned lrs, report and claims")
    compare.add_argument("--optimizers", type=_names, default=None,
                         help="comma-separated names (default: the budget's roster, tiny "
                              f"{','.join(DEFAULT_OPTIMIZERS['tiny'])}, quick adds "
                              f"{','.join(DEFAULT_OPTIMIZERS['quick'][len(DEFAULT_OPTIMIZERS['tiny']):])}, full "
                              f"{','.join(DEFAULT_OPTIMIZERS['full'][len(DEFAULT_OPTIMIZERS['quick']):])}; "
                              "`optarena list` for every name)")
    compare.add_argument("--tasks", default=None,
                         help="comma-separated built-in tasks (see `optarena tasks`) or module:function specs "
                              "(default: every built-in task)")
    compare.add_argument("--task", action="append", default=[], metavar="MODULE:FUNCTION",
                         help="a user task (repeatable): package.module:function or path/to/file.py:function, or a "
                              "workload: ultralytics:MODEL.yaml:DATA.yaml, lightning:pkg.module:Module[:DataModule], "
                              "hf:pkg.module:function, each with optional :key=value options")
    workload = compare.add_argument_group(
        "workloads", "for --task ultralytics:MODEL.yaml:DATA.yaml, lightning:pkg.module:Module[:DataModule] and "
                     "hf:pkg.module:function (a spec's own :key=value wins)")
    workload.add_argument("--epochs", type=positive_int_arg(), default=None,
                          help="ultralytics epochs per run (default by budget: tiny 1, quick 10, full 50)")
    workload.add_argument("--imgsz", type=positive_int_arg(), default=None, help="ultralytics training image size")
    workload.add_argument("--metric", type=_metric_name, default=None,
                          help="Lightning: a name the module logs in validation (default val_loss); HF: a "
                               "compute_metrics key (default the eval loss)")
    workload.add_argument("--higher-is-better", action="store_true", default=None,
                          help="the --metric grows when training improves (accuracy, not loss)")
    workload.add_argument("--steps", type=positive_int_arg(), default=None,
                          help="Lightning and HF optimizer steps per run (default by budget: tiny 20, quick 300, "
                               "full 2000)")
    compare.add_argument("--budget", choices=BUDGETS, default="quick",
                         help="steps, lr grid and seeds per task (default: quick)")
    compare.add_argument("--seeds", type=int, default=None,
                         help="seeds per chosen setting (default by budget: "
                              f"{', '.join(f'{b.name} {b.seeds}' for b in BUDGET_PRESETS.values())})")
    compare.add_argument("--batch-sizes", type=_ints, default=None,
                         help="comma-separated batch sizes for every task (default: each task's own)")
    compare.add_argument("--out", default="optarena-report", help="output folder (default: ./optarena-report)")
    compare.add_argument("--storage", default=None,
                         help="Optuna storage URL shared by all workers and machines "
                              "(default: sqlite:///OUT/arena.db; e.g. postgresql://user@host/db)")
    compare.add_argument("--workers", type=int, default=None,
                         help="worker processes on this machine (default: one per core, at most 8)")
    compare.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores/workers)")
    compare.add_argument("--device", default="cpu", help="torch device for training (default: cpu)")
    compare.add_argument("--stale-after", type=float, default=600.0,
                         help="seconds without a heartbeat after which another machine's running trial is re-run "
                              "(default: 600; at least 60, twice the 30 s heartbeat)")
    compare.add_argument("--run-timeout", type=float, default=None, metavar="SECONDS",
                         help="stop a run after this long and record it as timed out (default: tiny 120, quick 600, "
                              "full 3600; 0: no limit)")
    compare.add_argument("--tune", default="lr", metavar="lr[,weight_decay]",
                         help="what is tuned per optimizer: 'lr' (default: a half-decade lr grid that grows at its "
                              "edges) or 'lr,weight_decay' (the same fixed number of runs for every optimizer over "
                              "lr and weight decay: tiny 4, quick 9, full 16)")
    compare.set_defaults(func=_cmd_compare)

    tasks = commands.add_parser("tasks", help="list the built-in tasks")
    tasks.add_argument("--budget", choices=BUDGETS, default="quick",
                       help="the budget whose steps and batch sizes to list (default: quick)")
    tasks.set_defaults(func=_cmd_tasks)

    from . import speed

    speed_cmd = commands.add_parser("speed", help="time every optimizer and path against torch's AdamW")
    speed.add_arguments(speed_cmd)
    speed_cmd.set_defaults(func=speed.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # the built-in default job
        args = parser.parse_args(["compare"])
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"optarena: error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C in demo or tasks (compare and speed say what they kept): no traceback
        print("\noptarena: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
