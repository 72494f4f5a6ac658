"""Tables (and plots) over many runs' ``metrics.json``.

    python -m norga.report outputs/ [more dirs...] [--paper] [--strict] [--plot OUTDIR] [--csv FILE]
                           [--format md|csv]

A run directory is any directory below the given ones that holds ``metrics.json`` or a Hydra ``.hydra/``
folder. Finished runs are grouped by (dataset, backbone, method, gate, number of tasks, other task
overrides, bound) and each group becomes one row of mean ± std over its seeds; rows follow the paper's
method order (L2P, DualPrompt, S-Prompt, CODA-Prompt, HiDe-Prompt, NoRGa, then SimpleCIL, RanPAC), joint
upper bounds (``"bound": "joint"``) last, each continual row showing its gap to a joint row. A seed
finished twice in one group counts once (the newest run; ``--strict`` makes it an error). Nothing else is
averaged or dropped silently: runs that stopped on an error are listed under "Failed runs", the rest
(killed, still running, unreadable) under "Unfinished runs".
"""

from norga.report.cli import build_parser, main
from norga.report.loading import (
    build_report,
    drop_duplicate_seeds,
    find_run_dirs,
    group_runs,
    joint_reference,
    load_run,
    log_error,
)
from norga.report.model import (
    METHOD_ORDER,
    METRICS,
    NA,
    NO_GATE,
    PAPER_METRICS,
    STD_NOTE,
    Duplicate,
    Failed,
    Group,
    GroupKey,
    Report,
    Run,
    Unfinished,
)
from norga.report.plots import plot_group
from norga.report.tables import caption, csv_rows, markdown_rows, render_csv, render_markdown

__all__ = [
    "METHOD_ORDER", "METRICS", "NA", "NO_GATE", "PAPER_METRICS", "STD_NOTE", "Duplicate", "Failed", "Group",
    "GroupKey", "Report", "Run", "Unfinished", "build_parser", "build_report", "caption", "csv_rows",
    "drop_duplicate_seeds", "find_run_dirs", "group_runs", "joint_reference", "load_run", "log_error", "main",
    "markdown_rows", "plot_group", "render_csv", "render_markdown",
]
