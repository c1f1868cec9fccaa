"""``restora eval``: run an eval suite, or compare two runs.

    restora eval SUITE [--data PATH] [--executor local|ray] [--address ADDR] [--workers N] [--out DIR] [--limit N]
    restora eval compare RUN_A RUN_B [--method NAME]...

The lead wires :func:`add_eval_parser` into :mod:`agent.cli`; ``python -m evals.cli`` runs the same
command standalone (``python -m evals.cli smoke``). SUITE is a built-in name (see ``--list``) or a YAML
path. A re-run with the same ``--out`` skips the images already finished (resume). Exit codes: 0 done,
1 some images or methods failed (listed; the rest is reported), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", nargs="?", help="suite name or YAML path, or 'compare'")
    parser.add_argument("runs", nargs="*", help="with 'compare': the two run folders RUN_A RUN_B")
    parser.add_argument(
        "--data", default=None, help="data root for the suite's dataset paths (default: ../shared/data)"
    )
    parser.add_argument("--executor", choices=("local", "ray"), default="local", help="where items run")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray instance)")
    parser.add_argument("--workers", type=int, default=1, help="parallel workers (processes, or Ray tasks in flight)")
    parser.add_argument("--out", default=None, help="output folder (default: eval-out/<suite>)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of the suite")
    parser.add_argument("--method", action="append", default=None, help="with 'compare': only these methods")
    parser.add_argument("--list", action="store_true", help="list the built-in suites and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to ``restora``'s sub-parsers."""
    parser = subparsers.add_parser("eval", help="run an eval suite (smoke, mixed, underwater, udc) or compare runs")
    _add_arguments(parser)
    parser.set_defaults(func=run_eval)
    return parser


def _compare(args: argparse.Namespace) -> int:
    from evals.report import compare_runs, format_comparison

    if len(args.runs) != 2:
        print("error: usage: restora eval compare RUN_A RUN_B", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = compare_runs(args.runs[0], args.runs[1], args.method)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_comparison(result))
    return EXIT_OK


def run_eval(args: argparse.Namespace) -> int:
    """Run ``restora eval`` with parsed arguments; returns the exit code."""
    from evals.suite import SuiteError, default_data_root, list_suites, load_suite

    if args.list:
        print("\n".join(list_suites()))
        return EXIT_OK
    if not args.suite:
        print("error: name a suite (" + ", ".join(list_suites()) + ") or 'compare'", file=sys.stderr)
        return EXIT_USAGE
    if args.suite == "compare":
        return _compare(args)
    if args.runs:
        print(f"error: unexpected arguments {args.runs}", file=sys.stderr)
        return EXIT_USAGE
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from evals.datasets import DatasetLayoutError
    from evals.runner import RunOptions, run_suite

    out = Path(args.out) if args.out else Path("eval-out") / suite.name
    options = RunOptions(
        out_dir=out,
        data_root=Path(args.data) if args.data else default_data_root(),
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        limit=args.limit,
        progress=not args.quiet,
    )
    try:
        outcome = run_suite(suite, options)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; re-run the same command to continue (finished images in {out} are kept)", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except (DatasetLayoutError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print((out / "summary.md").read_text())
    print(
        f"{outcome.ran} image(s) evaluated, {outcome.skipped} reused, in {outcome.wall_seconds:.1f} s; "
        f"report: {out / 'report.html'}"
    )
    if outcome.failed:
        print(f"{len(outcome.failed)} image(s) with failures:", file=sys.stderr)
        for line in outcome.failed[:20]:
            print(f"  {line}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m evals.cli SUITE ...`` (same arguments as ``restora eval``)."""
    parser = argparse.ArgumentParser(
        prog="restora eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return run_eval(args)


if __name__ == "__main__":
    sys.exit(main())
