"""The report as Markdown and CSV tables, with the published numbers and the gap to a joint upper bound."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from norga import paper_results
from norga.fidelity import CORRECTED
from norga.report.loading import joint_reference
from norga.report.model import METRICS, NA, NO_GATE, PAPER_METRICS, STD_NOTE, Group, GroupKey, Refused, Report
from norga.report_protocols import protocol_section

# ------------------------------------------------------------------------------------------------- tables


def _fmt(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}"


def _mean_std(stat: tuple[float, float] | None) -> str:
    return NA if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def _diff(stat: tuple[float, float] | None, other: float | None) -> float | None:
    """Mean - ``other``, from the mean as displayed (2 decimals) so the table adds up."""
    if stat is None or other is None:
        return None
    return round(round(stat[0], 2) - round(other, 2), 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def _fmt_diff(value: float | None) -> str:
    return NA if value is None else f"{value:+.2f}"


def _published(key: GroupKey) -> dict[str, paper_results.Published | None]:
    """Published numbers matching a row; all None for bounds and for splits other than the paper's."""
    if key.bound or key.num_tasks != paper_results.PAPER_NUM_TASKS or key.protocol not in ("", "hide"):
        return {"FA": None, "CA": None, "FFM": None, "gate FA": None}
    gate = None if key.gate == NO_GATE else key.gate
    found: dict[str, paper_results.Published | None] = {
        m: paper_results.main_table(key.dataset, key.backbone, key.method, m, gate) for m in PAPER_METRICS
    }
    found["gate FA"] = paper_results.gate_ablation(key.dataset, key.backbone, key.method, gate)
    return found


def _published_mean(published: paper_results.Published | None) -> float | None:
    return None if published is None else published.mean


def _joint_name(ref: GroupKey) -> str:
    name = ref.method if ref.gate == NO_GATE else f"{ref.method}/{ref.gate}"
    return f"{name} [{ref.variant}]" if ref.variant else name


def _joint_gap(group: Group, groups: Sequence[Group]) -> tuple[float | None, GroupKey | None]:
    """FA - joint FA and the joint row it was taken from (None, None without one)."""
    ref = joint_reference(group.key, groups)
    if ref is None:
        return None, None
    joint_fa = ref.stat("final_avg_acc")
    return _diff(group.stat("final_avg_acc"), None if joint_fa is None else joint_fa[0]), ref.key


def _has_joint(groups: Sequence[Group]) -> bool:
    return any(g.key.bound == "joint" for g in groups)


def _metric_cell(group: Group, metric_key: str) -> str:
    cell = _mean_std(group.stat(metric_key))
    count = len(group.reported(metric_key))
    if 0 < count < len(group.runs):  # a null is left out, never averaged: say over how many seeds
        cell += f" ({count} of {len(group.runs)} seeds)"
    return cell


def _joint_cell(group: Group, groups: Sequence[Group]) -> str:
    gap, ref = _joint_gap(group, groups)
    if ref is None or gap is None:
        return NA
    same = (ref.method, ref.gate, ref.variant) == (group.key.method, group.key.gate, group.key.variant)
    return _fmt_diff(gap) if same else f"{_fmt_diff(gap)} (vs {_joint_name(ref)} joint)"


def markdown_rows(groups: Sequence[Group], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the Markdown results table."""
    show_variant = any(g.key.variant for g in groups)
    show_joint = _has_joint(groups)
    header = ["dataset", "backbone", "method", "gate", "T", *(["overrides"] if show_variant else []),
              "n", "seeds", *(label for label, _ in METRICS), *(["FA - joint FA"] if show_joint else [])]
    if paper:
        header += ["paper FA", "Δ FA", "paper CA", "Δ CA", "paper FFM", "Δ FFM", "paper gate FA", "Δ gate FA"]
    rows = []
    for g in groups:
        k = g.key
        row = [k.dataset, k.backbone, k.method_label, k.gate, str(k.num_tasks),
               *([k.variant or "-"] if show_variant else []),
               str(len(g.runs)), ", ".join(g.seeds), *(_metric_cell(g, key) for _, key in METRICS),
               *([_joint_cell(g, groups)] if show_joint else [])]
        if paper:
            stats = {label: g.stat(key) for label, key in METRICS}
            pub = _published(k)
            for label, stat_label in (("FA", "FA"), ("CA", "CA"), ("FFM", "FFM"), ("gate FA", "FA")):
                published = pub[label]
                row += [NA if published is None else str(published),
                        _fmt_diff(_diff(stats[stat_label], _published_mean(published)))]
        rows.append(row)
    return header, rows


def csv_rows(groups: Sequence[Group], paper: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the CSV table: one number per column, 2 decimals, ``n/a`` when missing.

    With joint-bound rows, three columns follow: ``bound`` (``joint`` or empty), ``joint_ref`` (the joint
    row a continual row is compared with, ``method[/gate] [overrides]``) and ``joint_gap_fa``.
    """
    show_joint = _has_joint(groups)
    header = ["dataset", "backbone", "method", "gate", "num_tasks", "overrides", "n_seeds", "seeds"]
    for label, _ in METRICS:
        header += [f"{label.lower()}_mean", f"{label.lower()}_std"]
    if paper:
        for label in PAPER_METRICS:
            low = label.lower()
            header += [f"paper_{low}_mean", f"paper_{low}_std", f"diff_{low}"]
        header += ["paper_gate_fa", "diff_gate_fa"]
    if show_joint:
        header += ["bound", "joint_ref", "joint_gap_fa"]
    show_fidelity = any(g.key.fidelity != CORRECTED for g in groups)
    header += ["fidelity"] if show_fidelity else []
    rows = []
    for g in groups:
        k = g.key
        stats = {label: g.stat(key) for label, key in METRICS}
        row = [k.dataset, k.backbone, k.method, k.gate, str(k.num_tasks), k.variant, str(len(g.runs)),
               " ".join(g.seeds)]
        for label, _ in METRICS:
            stat = stats[label]
            row += [NA, NA] if stat is None else [_fmt(stat[0]), _fmt(stat[1])]
        if paper:
            pub = _published(k)
            for label in PAPER_METRICS:
                p = pub[label]
                row += [_fmt(_published_mean(p)), _fmt(p.std if p else None),
                        _fmt(_diff(stats[label], _published_mean(p)))]
            gate_fa = pub["gate FA"]
            row += [_fmt(_published_mean(gate_fa)), _fmt(_diff(stats["FA"], _published_mean(gate_fa)))]
        if show_joint:
            gap, ref = _joint_gap(g, groups)
            row += [k.bound, "" if ref is None else _joint_name(ref), _fmt(gap)]
        row += [k.fidelity] if show_fidelity else []
        rows.append(row)
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def caption(paper: bool, joint: bool = False) -> str:
    text = (f"Percent; FA = final average accuracy, CA = cumulative average accuracy, FFM = forgetting, "
            f"TII = task-identity inference accuracy ({NA} for methods that do not infer the task); "
            f"{STD_NOTE}.")
    if joint:
        text += (" (joint) = the non-continual upper bound, trained on all classes at once; FA - joint FA = "
                 "this row's FA minus the joint FA of the same dataset and backbone, from the same method "
                 "where there is one, else from the joint row named.")
    if paper:
        text += (" paper = published mean ± std (NoRGa, NeurIPS 2024, Table 1: L2P, DualPrompt, S-Prompt, "
                 f"CODA-Prompt, HiDe-Prompt, NoRGa; {paper_results.PAPER_NUM_TASKS} tasks, seeds 40/42/44), "
                 f"paper gate FA = the gate ablation's FA; Δ = reproduced mean - published mean; {NA} = not "
                 "published for this row or split.")
    return text


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else "None."


def render_markdown(report: Report, paper: bool) -> str:
    """The results table, then the duplicate seeds (if any), failed runs and unfinished runs."""
    groups = report.groups
    parts = ["## Results", "", caption(paper, _has_joint(groups)), ""]
    parts.append(_md_table(*markdown_rows(groups, paper)) if groups else "No finished runs.")
    parts += protocol_section(groups, paper)  # rows labelled by protocol, split and backbone tag
    if report.duplicates:
        parts += ["", "## Duplicate seeds", "",
                  "A seed finished more than once in a row: only its newest run (metrics.json time) is used.",
                  "", _bullets([d.line(markdown=True) for d in report.duplicates])]
    parts += ["", "## Failed runs", "", _bullets([f.line(markdown=True) for f in report.failed])]
    parts += ["", "## Unfinished runs", "", _bullets([u.line(markdown=True) for u in report.unfinished])]
    if report.refused:
        parts += ["", refused_note(report.refused)]
    return "\n".join(parts) + "\n"


def render_csv(groups: Sequence[Group], paper: bool) -> str:
    header, rows = csv_rows(groups, paper)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def refused_note(refused: Sequence[Refused]) -> str:
    """One line: how many refused runs were skipped, and why (each reason once)."""
    reasons = sorted({r.reason[:100] for r in refused})
    shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else "")
    return (f"Skipped {len(refused)} run folder(s) refused before training started (nothing was trained; "
            f"delete them at will): {shown}")
