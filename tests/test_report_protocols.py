"""The report labels every row with dataset, data split, B{init}Inc{inc} split, class order, protocol and
backbone tag, never averages across labels, and prints a published number only beside a row of the same
labels, with its metric named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from norga import paper_results
from norga.report import build_report, find_run_dirs, main


def write_run(path: Path, seed: int, protocol: str, acc: list[list[float]], counts: list[int], split: str = "B0Inc20",
              order: str = "np-seed-1993", dataset: str = "imagenet_a", backbone: str = "augreg_in21k",
              method: str = "simplecil") -> None:
    from norga.metrics import summarize
    from norga.metrics.pooled import four_accuracies

    path.mkdir(parents=True)
    metrics = {"finished": True, "dataset": dataset, "backbone": backbone, "method": method, "gate": None,
               "bound": None, "seed": seed, "num_tasks": len(acc), "acc_matrix": acc, "protocol": protocol,
               "split": split, "order": order, "data_split": "pilot-zip", "test_counts": counts,
               **summarize(acc), **four_accuracies(acc, counts)}
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_rows_carry_every_label_and_are_never_averaged_across_them(tmp_path, capsys):
    acc = [[80.0], [70.0, 40.0]]
    write_run(tmp_path / "a", 1993, "pilot", acc, [100, 20])
    write_run(tmp_path / "b", 1993, "pilot", acc, [100, 20], split="B0Inc10")  # another split
    write_run(tmp_path / "c", 42, "hide", acc, [100, 20], order="py-seed-42")  # another protocol
    write_run(tmp_path / "d", 40, "hide", [[60.0], [50.0, 30.0]], [100, 20], order="py-seed-40")  # its other seed
    report = build_report(find_run_dirs([tmp_path]))
    keys = sorted((g.key.protocol, g.key.split, len(g.runs)) for g in report.groups)
    assert keys == [("hide", "pilot-zip/B0Inc20/py-seed", 2), ("pilot", "pilot-zip/B0Inc10/np-seed-1993", 1),
                    ("pilot", "pilot-zip/B0Inc20/np-seed-1993", 1)]
    assert main([str(tmp_path), "--paper"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("## Results by protocol"):]
    row = next(line for line in section.splitlines() if "pilot-zip/B0Inc20/np-seed-1993" in line)
    # pooled A_B after task 1: (70 * 100 + 40 * 20) / 120 = 65.0; the task mean is 55.0
    assert "| imagenet_a | pilot-zip/B0Inc20/np-seed-1993 | pilot | augreg_in21k | simplecil |" in row
    assert "| 65.00 ± 0.00 |" in row and "| 55.00 ± 0.00 |" in row
    assert "acc_avg_pooled = 59.77 (EASE/MOS Table 1)" in row and "acc_last_pooled = 48.91" in row
    assert "acc_last_pooled +16.09" in row  # 65.00 - 48.91
    other = next(line for line in section.splitlines() if "B0Inc10/np-seed-1993" in line)
    assert "acc_avg_pooled = 60.64 (RCIL log)" in other and "59.77" not in other  # B0Inc10's own row
    hide = next(line for line in section.splitlines() if "py-seed" in line)
    assert "| 2 | 40, 42 |" in hide and hide.endswith("| n/a | n/a |")


def test_published_rows_are_keyed_by_every_label():
    row = paper_results.benchmark_row("vtab", "B0Inc10", "pilot", "augreg_in21k", "coda")
    assert {m: p.mean for m, (p, _) in row.items()} == {"acc_avg_pooled": 83.90, "acc_last_pooled": 83.02}
    assert paper_results.benchmark_row("vtab", "B0Inc10", "hide", "augreg_in21k", "coda") == {}
    assert paper_results.benchmark_row("vtab", "B0Inc10", "pilot", "sup21k", "coda") == {}
    sd = paper_results.benchmark_row("imr", "B0Inc40", "pilot", "augreg2_in21k_ft_in1k", "hide")
    assert {m: p.mean for m, (p, _) in sd.items()} == {"acc_avg_pooled": 78.15, "acc_last_pooled": 74.77}
    # every published row names a method norga has (read from the shipped table itself)
    text = (Path(paper_results.__file__).parent / "assets" / "benchmark_results.csv").read_text()
    methods = {row["method"] for row in csv.DictReader(l for l in text.splitlines() if l and l[0] != "#")}
    shipped = {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml")}
    assert methods <= shipped
