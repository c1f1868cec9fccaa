"""Share of real underwater images whose UIQM and UCIQE the agent improves (``python -m evals.bench_underwater``).

    python -m evals.bench_underwater [--policy underwater] [--sets U45 EUVP_test_samples_FUnIE-GAN ...] [--limit N]

Runs the agent on every image of each set's ``lq/`` folder under ``../shared/data/underwater`` (sub-folders
included) and prints, per set, how many outputs score higher than their input in UIQM and in UCIQE
(:mod:`evals.underwater_metrics`), how often the agent returned the input unchanged, and, for sets with
references (``gt/``), the mean PSNR change of the output against the reference. The full suite
with baselines and reports is ``restora eval underwater``; this is the quick check of one policy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_SETS = ("EUVP_test_samples_FUnIE-GAN", "U45", "LSUI_test_samples_Ushape", "RUIE_UCCS")


def main(argv: list[str] | None = None) -> int:
    """Print the improvement rates per set."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--policy", default="underwater")
    parser.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS))
    parser.add_argument("--limit", type=int, default=None, help="first N images of each set")
    args = parser.parse_args(argv)

    from agent.context import RunContext
    from agent.imageio import iter_inputs, load_image
    from agent.runner import restore_image
    from evals.metrics import psnr
    from evals.underwater_metrics import uciqe, uiqm

    root = args.shared / "data" / "underwater"
    if not root.is_dir():
        print(f"error: {root} not found; pass --shared", file=sys.stderr)
        return 2
    context = RunContext(policy=args.policy)
    print(f"policy: {args.policy}")
    for name in args.sets:
        files = iter_inputs([root / name / "lq"], recursive=True)[0][: args.limit]
        better_uiqm = better_uciqe = kept_input = 0
        psnr_changes: list[float] = []
        with tempfile.TemporaryDirectory(prefix="restora-uw-") as tmp:
            for path in files:
                result = restore_image(path, Path(tmp) / "run", context)
                assert result.output_path is not None, f"{path}: {result.reason}"
                before, after = load_image(path).image, load_image(result.output_path).image
                better_uiqm += uiqm(after) > uiqm(before) + 1e-6
                better_uciqe += uciqe(after) > uciqe(before) + 1e-6
                kept_input += result.kept == "input"
                reference = root / name / "gt" / path.relative_to(root / name / "lq")
                if reference.is_file():  # paired sets: how far the output moved from the reference
                    gt = load_image(reference).image
                    if gt.shape == after.shape:
                        psnr_changes.append(psnr(after, gt) - psnr(before, gt))
        n = max(len(files), 1)
        print(
            f"{name:<30} n={len(files):>3}  UIQM improved {better_uiqm / n:6.1%}  "
            f"UCIQE improved {better_uciqe / n:6.1%}  input returned {kept_input}"
            + (f"  PSNR to reference {sum(psnr_changes) / len(psnr_changes):+.2f} dB" if psnr_changes else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
