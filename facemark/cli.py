"""The ``facemark`` command line: one subcommand per job.

Each subcommand imports its implementation lazily so that ``facemark --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


class CommandError(Exception):
    """A user-facing error: printed as ``facemark <command>: error: ...`` with exit code 2."""


# --- facemark layouts -------------------------------------------------------------------------
def _add_layouts(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument(
        "name",
        nargs="?",
        help="a built-in layout (wflw98, 300w68, cofw29) or a layout YAML file to describe; omit to list the built-ins",
    )

    def run(args: argparse.Namespace) -> int:
        from facemark.layouts import available_layouts, get_layout

        if args.name is None:
            for name in available_layouts():
                layout = get_layout(name)
                print(f"{name:8s} {layout.num_points:3d} points  (layout {layout.name})")
            return 0
        try:
            layout = get_layout(args.name)
        except (KeyError, ValueError, FileNotFoundError) as error:
            raise CommandError(str(error).strip('"')) from None
        print(f"{layout.name}: {layout.num_points} points")
        print(f"  inter-ocular pair: {layout.inter_ocular}")
        print(f"  inter-pupil: centroid of {list(layout.inter_pupil[0])} to centroid of {list(layout.inter_pupil[1])}")
        for group, indices in layout.groups.items():
            print(f"  {group:12s} {list(indices)}")
        print(f"  flip permutation: {list(layout.flip_permutation)}")
        return 0

    return run


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]]] = {
    "layouts": ("list the landmark layouts or describe one", _add_layouts),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from facemark import __version__

    parser = argparse.ArgumentParser(
        prog="facemark",
        description="Facial landmark detection: SLPT and SDFL, paper-exact evaluation, native dataset readers.",
    )
    parser.add_argument("--version", action="version", version=f"facemark {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, (summary, add) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        sub.set_defaults(run=add(sub))
        commands[name] = sub
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        commands[args.command].error(str(error))  # exits with status 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
