"""The report's labels of a run's protocol, and its table of rows labelled by them.

Every row of that table names its dataset, data split, ``B{init}Inc{inc}`` split, class order, protocol and
backbone tag (``imagenet_a/pilot-zip/B0Inc20/np-seed-1993 pilot augreg_in21k``); runs are averaged only within
one such label (the labels are part of the report's group key), and a published number is shown beside a row
only when its own labels are the same (:func:`norga.paper_results.benchmark_row`), with its metric named.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from norga import paper_results

# (column, metrics.json key): the pooled accuracies first (PILOT's Ā and A_B), then the task means (FA, CA)
COLUMNS = (("Ā pooled", "acc_avg_pooled"), ("A_B pooled", "acc_last_pooled"),
           ("last task-mean (FA)", "acc_last_taskmean"), ("avg task-mean (CA)", "acc_avg_taskmean"))


def protocol_labels(metrics: dict[str, Any]) -> tuple[str, str]:
    """(protocol, ``<data split>/<B{init}Inc{inc}>/<class order>``) of a run's metrics.json; ("", "") for a run
    recorded before protocols. The run seed is left out of a Python-seeded order (it varies within a row)."""
    protocol = metrics.get("protocol")
    if not isinstance(protocol, str):
        return "", ""
    order = str(metrics.get("order") or "?")
    if order.startswith("py-seed-"):
        order = "py-seed"
    labels = f"{metrics.get('data_split') or '-'}/{metrics.get('split') or '?'}/{order}"
    if metrics.get("license_accepted"):  # trained on data whose licence restricts it (ObjectNet): said in the row
        labels += " (licence accepted)"
    return protocol, labels


def _values(group: Any, key: str) -> list[float]:
    out = []
    for run in group.runs:
        try:
            value = json.loads((run.path / "metrics.json").read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(float(value))
    return out


def _cell(values: list[float], n: int) -> str:
    if not values:
        return "n/a"
    text = f"{np.mean(values):.2f} ± {np.std(values):.2f}"
    return text if len(values) == n else f"{text} ({len(values)} of {n} seeds)"


def protocol_rows(groups: Sequence[Any], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells: one row per group of runs that recorded a protocol."""
    header = ["dataset", "data split / tasks / order", "protocol", "backbone", "method", "n", "seeds",
              *(label for label, _ in COLUMNS)]
    if paper:
        header += ["paper (metric = value, source)", "Δ"]
    rows = []
    for g in groups:
        k = g.key
        if not k.protocol:
            continue
        stats = {key: _values(g, key) for _, key in COLUMNS}
        row = [k.dataset, k.split, k.protocol, k.backbone, k.method_label, str(len(g.runs)), ", ".join(g.seeds),
               *(_cell(stats[key], len(g.runs)) for _, key in COLUMNS)]
        if paper:
            tasks = k.split.split("/")[1] if k.split.count("/") >= 2 else ""  # B{init}Inc{inc}
            published = paper_results.benchmark_row(k.dataset, tasks, k.protocol, k.backbone, k.method)
            row.append("; ".join(f"{m} = {p} ({src})" for m, (p, src) in published.items()) or "n/a")
            row.append(", ".join(f"{m} {round(float(np.mean(stats[m])), 2) - p.mean:+.2f}"
                                 for m, (p, _) in published.items() if stats.get(m)) or "n/a")
        rows.append(row)
    return header, rows


def protocol_section(groups: Sequence[Any], paper: bool) -> list[str]:
    """Markdown lines of the labelled table (nothing when no run recorded a protocol)."""
    header, rows = protocol_rows(groups, paper)
    if not rows:
        return []

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    note = ("Each row is one label: dataset, data split / B{init}Inc{inc} tasks / class order, protocol and "
            "backbone tag; runs are averaged within a row only. Ā / A_B pooled = accuracy over the pooled test "
            "images of all seen tasks, averaged over stages / after the last (LAMDA-PILOT, EASE, MOS; InfLoRA's "
            "and SD-LoRA's AAA / Acc); task-mean = the unweighted mean over tasks (HiDe-Prompt / NoRGa FA, CA).")
    if paper:
        note += (" paper = the published number of the same labels with its metric and source; Δ = reproduced "
                 "mean - published; n/a = nothing published for these labels.")
    return ["", "## Results by protocol", "", note, "", line(header), "|" + "---|" * len(header),
            *(line(r) for r in rows)]
