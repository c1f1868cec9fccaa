"""``restora tools add PATH --restores noise [--name N]``: register a user checkpoint as a tool.

The lead wires :func:`add_tools_add_parser` into ``agent/cli.py`` under the ``tools`` command's
sub-commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_tools_add(args: argparse.Namespace) -> int:
    """Validate the checkpoint with spandrel and record it in the user-tool catalogue."""
    from tools.learned.user import UnsupportedCheckpointError, add_user_tool

    restores = [name for value in args.restores for name in value.split(",") if name.strip()]
    try:
        entry = add_user_tool(
            args.path, restores, name=args.name, upscale=args.upscale, catalogue=args.catalogue, replace=args.replace
        )
    except (FileNotFoundError, UnsupportedCheckpointError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(
        f"added {entry['name']}: {entry['architecture']} x{entry['scale']} restoring {', '.join(entry['restores'])}\n"
    )
    return 0


def add_tools_add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``add`` sub-command to ``subparsers`` (those of ``restora tools``) and return its parser."""
    parser = subparsers.add_parser(
        "add",
        help="register a restoration checkpoint (.pth/.safetensors; SwinIR, Restormer, NAFNet, SCUNet, ESRGAN...)",
        description="Register a restoration checkpoint as a tool the planner can choose (architecture detected by "
        "spandrel).",
    )
    parser.add_argument("path", type=Path, help="checkpoint file")
    parser.add_argument(
        "--restores", required=True, action="append", help="degradation(s) it removes, e.g. noise or noise,jpeg"
    )
    parser.add_argument("--name", default=None, help="tool name (default user_<file stem>)")
    parser.add_argument("--upscale", action="store_true", help="keep a super-resolution model's larger output")
    parser.add_argument(
        "--catalogue", type=Path, default=None, help="catalogue file (default $RESTORA_HOME or ~/.config/restora)"
    )
    parser.add_argument("--replace", action="store_true", help="overwrite a catalogued tool of the same name")
    parser.set_defaults(func=cmd_tools_add)
    return parser
