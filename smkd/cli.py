"""The ``smkd`` command line.

Each subcommand is one function in ``SUBCOMMANDS`` that registers its parser and
sets ``handler``, a function from the parsed arguments to the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from smkd.model import Scenario, Topology, ValidationError, load_file

# exit code for invalid input, the same code argparse uses for usage errors
EXIT_INVALID = 2

# argparse exposes the type of add_subparsers() only under this private name
SubParsers = argparse._SubParsersAction


def add_validate_parser(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check topology and scenario files",
        description=(
            "Check topology and scenario files and print every problem with its "
            "file and line. A file with a 'timeline' or 'topology' key is a "
            "scenario, and its topology file is checked too. Exits with 0 when "
            f"all files are valid, else with {EXIT_INVALID}."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML file to check")
    parser.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    failed = 0
    problem_count = 0
    for file in args.files:
        try:
            model = load_file(file)
        except ValidationError as error:
            failed += 1
            problem_count += len(error.problems)
            for problem in error.problems:
                print(problem)
            continue
        print(f"{file}: ok ({summarize(model)})")

    if failed:
        print(
            f"{_count(problem_count, 'problem')} in {failed} of "
            f"{_count(len(args.files), 'file')}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return 0


def summarize(model: Topology | Scenario) -> str:
    """Describe the size of a topology, or of a scenario and its topology."""
    if isinstance(model, Scenario):
        topology = model.topology
        return (
            f"{_count(len(model.timeline), 'action')}, "
            f"{_count(len(model.expect), 'expectation')}; "
            f"topology {topology.source}: {summarize(topology)}"
        )
    return (
        f"{_count(len(model.nodes), 'node')}, {_count(len(model.links), 'link')}, "
        f"{_count(len(model.groups), 'group')}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def add_run_parser(subparsers: SubParsers) -> None:
    from smkd.runner import add_run_parser as add

    add(subparsers)


def add_import_zoo_parser(subparsers: SubParsers) -> None:
    from smkd.zoo import add_parser

    add_parser(subparsers)


def add_bench_parser(subparsers: SubParsers) -> None:
    from smkd.bench import add_bench_parser as add

    add(subparsers)


def add_decode_parser(subparsers: SubParsers) -> None:
    from smkd.decode import add_decode_parser as add

    add(subparsers)


def add_wireshark_parser(subparsers: SubParsers) -> None:
    from smkd.decode import add_wireshark_parser as add

    add(subparsers)


def add_report_parser(subparsers: SubParsers) -> None:
    from smkd.report import add_report_parser as add

    add(subparsers)


def add_compose_parser(subparsers: SubParsers) -> None:
    from smkd.compose import add_compose_parser as add

    add(subparsers)


SUBCOMMANDS: list[Callable[[SubParsers], None]] = [
    add_run_parser,
    add_validate_parser,
    add_import_zoo_parser,
    add_bench_parser,
    add_decode_parser,
    add_wireshark_parser,
    add_report_parser,
    add_compose_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smkd",
        description="Emulation testbed for RFC 1949 secure multicast key distribution.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as error:
        # argparse exits after --help (0) and on usage errors (2)
        return error.code if isinstance(error.code, int) else EXIT_INVALID

    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    try:
        return args.handler(args)
    except BrokenPipeError:
        # the reader went away (as with `| head`); stop writing quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
