"""``norga-report`` / ``python -m norga.report``: the command line over :mod:`norga.report`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from norga.report.loading import build_report, find_run_dirs
from norga.report.model import Report
from norga.report.plots import plot_group
from norga.report.tables import render_csv, render_markdown

# ---------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="norga-report",
        description=(
            "Summarize runs: every directory below DIR with a metrics.json or a .hydra/ folder is a run. "
            "Finished runs are grouped by (dataset, backbone, method, gate, number of tasks, other task "
            "overrides, bound) and shown as mean ± std over seeds of FA, CA, FFM and TII, in the paper's "
            "method order, joint upper bounds last. The std is numpy's population std (ddof=0). A seed "
            "finished twice in one row counts once, the newest run. Failed and unfinished runs are listed "
            "separately, never averaged."
        ),
        epilog="Exit status: 0 when runs were reported, 1 on duplicate seeds with --strict, 2 when no run "
        "directory was found.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="directories searched recursively")
    parser.add_argument("--paper", action="store_true",
                        help="add the published FA/CA/FFM (Table 1, all six methods) and the gate ablation's "
                        "FA, each with reproduced - published")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) when a seed finished more than once in a row, instead of using "
                        "the newest run")
    parser.add_argument("--plot", type=Path, metavar="OUTDIR",
                        help="write per-group accuracy-curve and accuracy-matrix PNGs to OUTDIR")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV to FILE")
    parser.add_argument("--format", choices=("md", "csv"), default="md",
                        help="what to print: Markdown (default) or CSV; with csv, notes go to stderr")
    return parser


def _print_notes_csv(report: Report) -> None:
    """With CSV on stdout, what Markdown shows below the table goes to stderr, one line each."""
    for d in report.duplicates:
        print(f"duplicate seed: {d.line()}", file=sys.stderr)
    for f in report.failed:
        print(f"failed: {f.line()}", file=sys.stderr)
    for u in report.unfinished:
        print(f"unfinished: {u.line()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for missing in (d for d in args.dirs if not d.exists()):
        print(f"norga-report: no such file or directory: {missing}", file=sys.stderr)
    run_dirs = find_run_dirs([d for d in args.dirs if d.exists()])
    if not run_dirs:
        searched = ", ".join(map(str, args.dirs))
        print(f"norga-report: no runs found under {searched} "
              "(looked for directories with metrics.json or .hydra/)", file=sys.stderr)
        return 2

    report = build_report(run_dirs)
    if args.strict and report.duplicates:
        print("norga-report: error: seeds finished more than once (--strict):", file=sys.stderr)
        for d in report.duplicates:
            runs = ", ".join(str(r.path) for r in (d.used, *d.ignored))
            print(f"  {d.key.label} seed {d.seed}: {runs}", file=sys.stderr)
        return 1
    # with CSV on stdout, everything that is not the table goes to stderr so the output stays parseable
    notes = sys.stderr if args.format == "csv" else sys.stdout
    if args.format == "csv":
        sys.stdout.write(render_csv(report.groups, args.paper))
        _print_notes_csv(report)
    else:
        sys.stdout.write(render_markdown(report, args.paper))
        if args.csv is not None or args.plot is not None:
            print()
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(render_csv(report.groups, args.paper), encoding="utf-8")
        print(f"CSV written to {args.csv}", file=notes)
    if args.plot is not None:
        for group in report.groups:
            for path in plot_group(group, args.plot):
                print(f"plot: {path}", file=notes)
    return 0
