"""The ``optarena`` command. With no arguments it runs the built-in default job (today: the digits demo)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .registry import get_optimizer_info, list_optimizers


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        try:
            get_optimizer_info(name)
        except ValueError as err:  # argparse shows an ArgumentTypeError's message, not a ValueError's
            raise argparse.ArgumentTypeError(str(err)) from None
    return names


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    results = run_demo(args.optimizers, epochs=args.epochs, seed=args.seed)
    return 1 if any(r.diverged for r in results) else 0


def _cmd_list(args: argparse.Namespace) -> int:
    print(f"{'name':<10} {'source':<12} {'default lr':>10} {'state B/param':>13}  description")
    for name in list_optimizers():
        info = get_optimizer_info(name)
        print(f"{name:<10} {info.source:<12} {info.default_lr:>10g} {info.state_bytes_per_param:>13g}  "
              f"{info.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optarena", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="train an MLP on scikit-learn's digits with several optimizers")
    demo.add_argument("--optimizers", type=_names, default=["adamw", "lion"],
                      help="comma-separated names (default: adamw,lion)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    listing = commands.add_parser("list", help="list the registered optimizers")
    listing.set_defaults(func=_cmd_list)
    from . import speed

    speed_cmd = commands.add_parser("speed", help="time every optimizer and path against torch's AdamW")
    speed.add_arguments(speed_cmd)
    speed_cmd.set_defaults(func=speed.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # the built-in default job
        args = parser.parse_args(["demo"])
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"optarena: error: {err}\n")


if __name__ == "__main__":
    raise SystemExit(main())
