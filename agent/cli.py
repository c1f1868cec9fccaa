"""The ``restora`` command line.

Exit codes:
    0  every input was processed (an output was written for each, possibly the unchanged input)
    1  some inputs failed (unreadable, refused); the batch went on and lists them at the end
    2  usage error: bad arguments, unknown policy or tool, no input found
    130  interrupted (Ctrl-C); re-run with ``--resume`` to continue
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _context(args: argparse.Namespace) -> Any:
    from agent.context import RunContext

    return RunContext(
        policy=args.policy, iqa_weights_dir=getattr(args, "iqa_weights", None), assessor=getattr(args, "assessor", None)
    )


def gather_inputs(paths: list[str], recursive: bool = False) -> tuple[list[Path], list[tuple[Path, str]]] | None:
    """Expand files and folders into images; print the problems and return ``None`` when none is left."""
    from agent.imageio import iter_inputs

    files, missing = iter_inputs([Path(p) for p in paths], recursive=recursive)
    if not files:
        for path, why in missing:
            print(f"error: {path}: {why}", file=sys.stderr)
        print("error: no input images found", file=sys.stderr)
        return None
    return files, list(missing)


def cmd_run(args: argparse.Namespace) -> int:
    """Restore every input image; write ``OUT/<stem>.png`` and ``OUT/<stem>.restora/``."""
    from tqdm import tqdm

    from agent.imageio import ImageInputError
    from agent.runner import RUN_DIR_SUFFIX, output_names, restore_image

    if args.request:
        from agent.planning.request import parse_request

        intent = parse_request(args.request)
        if intent.needs_clarification and intent.clarification is not None:
            print(f"error: the request is unclear: {intent.clarification.question}", file=sys.stderr)
            return EXIT_USAGE
    gathered = gather_inputs(args.inputs, recursive=args.recursive)
    if gathered is None:
        return EXIT_USAGE
    files, failures = gathered
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = _context(args)
    names = output_names(files)
    results = []
    bar = tqdm(files, desc="restoring", unit="img", disable=args.quiet or len(files) < 1, file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.name[:30])
        stem = names[path]
        try:
            result = restore_image(
                path,
                out_dir / f"{stem}{RUN_DIR_SUFFIX}",
                context,
                request=args.request,
                output_path=out_dir / f"{stem}.png",
                resume=args.resume,
            )
            results.append(result)
            if not args.quiet:
                steps = " -> ".join(s["tool"] for s in result.trace.get("accepted", [])) or "no step"
                tqdm.write(f"{path.name}: {steps}; {result.kept} kept ({result.reason}) -> {result.output_path}")
        except ImageInputError as exc:
            failures.append((path, str(exc)))
        except Exception as exc:  # one bad image must not stop the batch
            logging.getLogger(__name__).debug("run failed", exc_info=True)
            failures.append((path, f"{type(exc).__name__}: {exc}"))
    if failures:
        print(f"\n{len(failures)} input(s) failed:", file=sys.stderr)
        for path, why in failures:
            print(f"  {path}: {why}", file=sys.stderr)
    if not args.quiet:
        print(f"{len(results)} image(s) restored into {out_dir}")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Degrade a built-in photo, restore it, and print PSNR before and after."""
    from agent.demo import run_demo

    return run_demo(Path(args.output), policy=args.policy, quiet=args.quiet, assessor=args.assessor)


def cmd_tools(args: argparse.Namespace) -> int:
    """List the tool catalogue with parameters."""
    from tools import default_registry

    registry = default_registry()
    if args.json:
        from dataclasses import asdict

        entries = [asdict(s) | {"missing": registry.get(s.name).missing()} for s in registry.specs()]
        print(json.dumps(entries, indent=2, default=str))
        return EXIT_OK
    for spec in registry.specs():
        flags = " [generative]" if spec.generative else ""
        restores = ", ".join(d.value for d in spec.restores)
        print(f"{spec.name}{flags}  ({spec.family}, {spec.device})  restores: {restores}")
        print(f"    {spec.description}")
        problem = registry.get(spec.name).missing()
        if problem:
            print(f"    NOT AVAILABLE HERE: {problem}")
        for p in spec.params:
            print(f"    - {p.describe()}" + (f": {p.description}" if p.description else ""))
    return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    """Print a run's trace as a table (or JSON)."""
    from agent.trace import format_table, load_trace

    try:
        trace = load_trace(args.run)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(trace, indent=2) if args.json else format_table(trace))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``restora``."""
    parser = argparse.ArgumentParser(prog="restora", description="Agentic image restoration.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="restore images (files or folders)")
    run.add_argument("inputs", nargs="+", help="image files or folders")
    run.add_argument("-o", "--output", default="restora-out", help="output folder (default: restora-out)")
    run.add_argument("--policy", default="default", help="policy name (default, fast) or YAML file")
    run.add_argument("--request", default=None, help='what to do, e.g. "remove the haze but keep the grain"')
    run.add_argument("--resume", action="store_true", help="continue interrupted runs from their checkpoints")
    run.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    run.add_argument("--iqa-weights", default=None, help="folder with pyiqa weight files (e.g. NIQE's)")
    run.add_argument("--assessor", default=None, help="estimators, saclip[:<folder>] or hybrid[:<folder>]")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-image lines")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="restore a built-in degraded example")
    demo.add_argument("-o", "--output", default="restora-demo", help="output folder (default: restora-demo)")
    demo.add_argument("--policy", default="default", help="policy name or YAML file")
    demo.add_argument("--assessor", default=None, help="estimators, saclip[:<folder>] or hybrid[:<folder>]")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    tools = sub.add_parser("tools", help="list restoration tools and their parameters (or: tools add PATH)")
    tools.add_argument("--json", action="store_true")
    tools.set_defaults(func=cmd_tools)
    from tools.learned.cli_commands import add_tools_add_parser

    add_tools_add_parser(tools.add_subparsers(dest="tools_command", metavar="{add}"))

    from agent.perception.cli_commands import add_assess_parser

    add_assess_parser(sub)

    from evals.cli import add_eval_parser

    add_eval_parser(sub)

    from agent.chat import add_chat_parser

    add_chat_parser(sub)

    trace = sub.add_parser("trace", help="print the steps of a run")
    trace.add_argument("run", help="run directory (OUT/<stem>.restora) or trace.json")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(func=cmd_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``restora`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("\ninterrupted; re-run with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, ValueError) as exc:  # bad policy file, unknown names, ...
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
