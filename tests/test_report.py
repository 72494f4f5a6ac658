"""norga.report on hand-made run directories: grouping, mean ± std, CSV, unfinished runs, --paper, --plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from norga import paper_results
from norga.report import main

REPO = Path(__file__).resolve().parents[1]
PAPER_MD = REPO.parent / "shared" / "PAPER_RESULTS.md"


def _matrix(num_tasks: int, done: int | None = None, value: float = 90.0) -> list[list[float]]:
    return [[value] * (i + 1) for i in range(num_tasks if done is None else done)]


def write_run(path: Path, *, dataset, backbone, method, gate, seed, fa, ca, ffm, tii,
              num_tasks=10, finished=True, done=None, overrides=None) -> Path:
    """A run directory as norga.engine.run writes it (metrics values as given: the report uses them as is)."""
    path.mkdir(parents=True)
    metrics = {"finished": finished, "dataset": dataset, "backbone": backbone, "method": method, "gate": gate,
               "seed": seed, "num_tasks": num_tasks, "acc_matrix": _matrix(num_tasks, done, fa),
               "final_avg_acc": fa, "cum_avg_acc": ca, "forgetting": ffm, "tii_acc": tii}
    (path / "metrics.json").write_text(json.dumps(metrics))
    if overrides is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
        (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    # group 1, seeds 40/42/44. By hand (std with ddof=0):
    #   FA  94, 95, 96       -> 95.00 ± sqrt(2/3) = 0.82      CA 95.5, 96, 96.5 -> 96.00 ± sqrt(1/6) = 0.41
    #   FFM 1, 2, 3          ->  2.00 ± 0.82                  TII 90, 91, 92    -> 91.00 ± 0.82
    for seed, fa, ca, ffm, tii in [(40, 94.0, 95.5, 1.0, 90.0), (42, 95.0, 96.0, 2.0, 91.0),
                                   (44, 96.0, 96.5, 3.0, 92.0)]:
        write_run(root / "cifar100" / "sup21k" / "norga" / f"s{seed}", dataset="cifar100", backbone="sup21k",
                  method="norga", gate="tanh", seed=seed, fa=fa, ca=ca, ffm=ffm, tii=tii)
    # group 2 (HiDe-Prompt, no gate), seeds 42/44, in a multirun-like layout:
    #   FA 70, 71.5 -> 70.75 ± 0.75   CA 73, 74 -> 73.50 ± 0.50
    #   FFM 5, 6    ->  5.50 ± 0.50   TII 80, 81 -> 80.50 ± 0.50
    hide = [(42, 70.0, 73.0, 5.0, 80.0), (44, 71.5, 74.0, 6.0, 81.0)]
    for job, (seed, fa, ca, ffm, tii) in enumerate(hide):
        write_run(root / "multirun" / "2024-01-01_00-00-00" / f"{job}_seed={seed}", dataset="imr",
                  backbone="ibot21k", method="hide", gate=None, seed=seed, fa=fa, ca=ca, ffm=ffm, tii=tii)
    # not finished: 3 of 10 tasks
    write_run(root / "cifar100" / "sup21k" / "norga" / "s46", dataset="cifar100", backbone="sup21k",
              method="norga", gate="tanh", seed=46, fa=99.0, ca=99.0, ffm=0.0, tii=99.0, finished=False,
              done=3)
    # started, no task finished: only Hydra's files
    hydra_only = root / "imr" / "sup21k" / "norga" / "crashed" / ".hydra"
    hydra_only.mkdir(parents=True)
    (hydra_only / "config.yaml").write_text("seed: 40\ndataset:\n  name: imr\n  num_tasks: 10\n")
    (hydra_only / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      dataset: imr\n      backbone: sup21k\n      method: norga\n"
        "      gate: tanh\n")
    # a half-written file
    broken = root / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"finished": tr')
    return root


ROW_NORGA = ("| cifar100 | sup21k | norga | tanh | 10 | 3 | 40, 42, 44 "
             "| 95.00 ± 0.82 | 96.00 ± 0.41 | 2.00 ± 0.82 | 91.00 ± 0.82 |")
ROW_HIDE = ("| imr | ibot21k | hide | - | 10 | 2 | 42, 44 "
            "| 70.75 ± 0.75 | 73.50 ± 0.50 | 5.50 ± 0.50 | 80.50 ± 0.50 |")
CSV = (
    "dataset,backbone,method,gate,num_tasks,overrides,n_seeds,seeds,fa_mean,fa_std,ca_mean,ca_std,"
    "ffm_mean,ffm_std,tii_mean,tii_std\n"
    "cifar100,sup21k,norga,tanh,10,,3,40 42 44,95.00,0.82,96.00,0.41,2.00,0.82,91.00,0.82\n"
    "imr,ibot21k,hide,-,10,,2,42 44,70.75,0.75,73.50,0.50,5.50,0.50,80.50,0.50\n"
)


def test_markdown_table_and_unfinished_runs(runs, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    results, unfinished = out.split("## Unfinished runs")
    assert ROW_NORGA in results.splitlines()
    assert ROW_HIDE in results.splitlines()
    assert "ddof=0" in results
    lines = unfinished.splitlines()
    s46 = runs / "cifar100/sup21k/norga/s46"
    assert f"| {s46} | cifar100/sup21k/norga/tanh seed=46 | 3/10 tasks | not finished |" in lines
    crashed = next(line for line in lines if "crashed" in line)
    assert "| imr/sup21k/norga/tanh seed=40 | 0/10 tasks | no metrics.json" in crashed
    broken = next(line for line in lines if "broken" in line)
    assert "| ?/? tasks | unreadable metrics.json" in broken
    assert len([line for line in lines if line.startswith(f"| {runs}")]) == 3


def test_csv_to_stdout_and_file(runs, tmp_path, capsys):
    csv_file = tmp_path / "table" / "runs.csv"
    assert main([str(runs), "--format", "csv", "--csv", str(csv_file)]) == 0
    captured = capsys.readouterr()
    assert captured.out == CSV
    assert csv_file.read_text() == CSV
    # the table on stdout stays parseable; unfinished runs are reported on stderr instead
    assert "unfinished:" in captured.err and "s46" in captured.err and "3/10 tasks" in captured.err


def test_paper_columns(runs, capsys):
    assert main([str(runs), "--paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    norga = next(line for line in lines if line.startswith("| cifar100 | sup21k | norga"))
    # published CIFAR-100 / Sup-21K / NoRGa: FA 94.48 ± 0.13, CA 95.83 ± 0.37, FFM 1.44; tanh ablation 94.36
    assert norga.endswith("| 94.48 ± 0.13 | +0.52 | 95.83 ± 0.37 | +0.17 | 1.44 | +0.56 | 94.36 | +0.64 |")
    hide = next(line for line in lines if line.startswith("| imr | ibot21k | hide"))
    # published ImageNet-R / iBOT-21K / HiDe-Prompt: FA 70.83 ± 0.17, CA 73.23 ± 0.08; no FFM, no ablation
    assert hide.endswith("| 70.83 ± 0.17 | -0.08 | 73.23 ± 0.08 | +0.27 | n/a | n/a | n/a | n/a |")


def test_paper_csv_columns(runs, capsys):
    assert main([str(runs), "--paper", "--format", "csv"]) == 0
    header, norga, hide = capsys.readouterr().out.splitlines()
    assert header.endswith("paper_fa_mean,paper_fa_std,diff_fa,paper_ca_mean,paper_ca_std,diff_ca,"
                           "paper_ffm_mean,paper_ffm_std,diff_ffm,paper_gate_fa,diff_gate_fa")
    assert norga.endswith(",94.48,0.13,0.52,95.83,0.37,0.17,1.44,n/a,0.56,94.36,0.64")
    assert hide.endswith(",70.83,0.17,-0.08,73.23,0.08,0.27,n/a,n/a,n/a,n/a,n/a")


def test_module_entry_point(runs, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "norga.report", str(runs), "--format", "csv"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == CSV
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "norga.report", str(empty)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no runs found" in done.stderr


def test_plots(runs, tmp_path, capsys):
    outdir = tmp_path / "plots"
    assert main([str(runs), "--plot", str(outdir)]) == 0
    printed = [line.removeprefix("plot: ") for line in capsys.readouterr().out.splitlines()
               if line.startswith("plot: ")]
    stems = ("cifar100_sup21k_norga_tanh_T10", "imr_ibot21k_hide_nogate_T10")
    expected = {outdir / f"{stem}_{kind}.png" for stem in stems for kind in ("curve", "matrix")}
    assert {Path(p) for p in printed} == expected
    for path in expected:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_runs_exit_2(tmp_path, capsys):
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    assert main([str(tmp_path / "nothing")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2


def test_other_overrides_and_splits_are_separate_rows(tmp_path, capsys):
    common = dict(dataset="cifar100", backbone="sup21k", method="norga", gate="tanh", ca=95.0, ffm=1.0,
                  tii=90.0)
    write_run(tmp_path / "a", seed=40, fa=94.0, overrides=["seed=40", "logger=none", "progress=false",
                                                           "train.num_workers=8"], **common)
    write_run(tmp_path / "b", seed=40, fa=90.0, overrides=["seed=40", "optimizer.lr=0.01"], **common)
    write_run(tmp_path / "c", seed=40, fa=80.0, num_tasks=5, **common)
    assert main([str(tmp_path), "--paper"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cifar100")]
    assert len(rows) == 3
    # logger, progress and num_workers do not change results: no overrides entry; 94.00 - 94.48 published
    assert any("| 10 | - | 1 | 40 | 94.00 ± 0.00 |" in r and "| 94.48 ± 0.13 | -0.48 |" in r for r in rows)
    assert any("| 10 | optimizer.lr=0.01 | 1 | 40 | 90.00 ± 0.00 |" in r for r in rows)
    # a 5-task split is not the paper's 10-task setting: nothing to compare against
    five = next(r for r in rows if "| 5 |" in r)
    assert five.endswith("| n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")


def test_missing_summary_values_come_from_the_matrix(tmp_path, capsys):
    path = write_run(tmp_path / "r", dataset="digits", backbone="tiny", method="norga", gate="tanh", seed=42,
                     fa=0.0, ca=0.0, ffm=0.0, tii=None, num_tasks=2)
    data = json.loads((path / "metrics.json").read_text())
    data["acc_matrix"] = [[90.0], [80.0, 70.0]]  # FA 75, CA (90 + 75) / 2 = 82.5, FFM 90 - 80 = 10
    for key in ("final_avg_acc", "cum_avg_acc", "forgetting"):
        del data[key]
    (path / "metrics.json").write_text(json.dumps(data))
    assert main([str(tmp_path)]) == 0
    assert ("| digits | tiny | norga | tanh | 2 | 1 | 42 | 75.00 ± 0.00 | 82.50 ± 0.00 | 10.00 ± 0.00 | n/a |"
            in capsys.readouterr().out.splitlines())


def test_duplicate_seed_is_warned(tmp_path, capsys):
    common = dict(dataset="cub", backbone="sup21k", method="hide", gate=None, seed=42, ca=1.0, ffm=1.0,
                  tii=1.0)
    write_run(tmp_path / "a", fa=80.0, **common)
    write_run(tmp_path / "b", fa=82.0, **common)
    assert main([str(tmp_path)]) == 0
    assert "seed 42 appears 2 times" in capsys.readouterr().err


def test_published_table1_needs_the_published_gate():
    # Table 1 names no gate for NoRGa (any gate matches); every other method is published without one
    assert paper_results.main_table("cifar100", "sup21k", "norga", "FA", "gelu").mean == 94.48
    assert paper_results.main_table("cifar100", "sup21k", "l2p", "FA").mean == 83.06
    assert paper_results.main_table("cifar100", "sup21k", "l2p", "FA", "tanh") is None
    assert paper_results.main_table("cifar100", "sup21k", "simplecil", "FA") is None


@pytest.mark.skipif(not PAPER_MD.is_file(), reason=f"{PAPER_MD} not present")
def test_packaged_numbers_match_paper_results_md():
    """Every packaged number appears in PAPER_RESULTS.md, in the row and column it claims."""
    import re

    text = PAPER_MD.read_text()
    entries = paper_results.all_entries()
    assert len(entries) == 3 * 6 * 2 * 2 + 3 + 4 * 4  # Table 1 FA/CA, 3 FFM values, the gate ablation
    table1 = {}
    for line in text.splitlines():
        m = re.match(r"\| (Sup-21K|iBOT-21K|iBOT-1K) \| ([^|]+?) \| (.*) \|$", line)
        if m:
            table1[m[1], m[2]] = re.findall(r"(\d+\.\d+) \+- (\d+\.\d+)", m[3])
    columns = [("CIFAR-100", "FA"), ("CIFAR-100", "CA"), ("ImageNet-R", "FA"), ("ImageNet-R", "CA")]
    for (table, dataset, backbone, method, _gate, metric), pub in entries.items():
        if table == "table1" and metric != "FFM":
            mean, std = table1[backbone, method][columns.index((dataset, metric))]
            assert (pub.mean, pub.std) == (float(mean), float(std))
    assert "NoRGa 1.44 (CIFAR-100), 4.59 (ImageNet-R); HiDe-Prompt 1.50 (CIFAR-100)" in text
    assert str(paper_results.main_table("imr", "sup21k", "norga", "FFM")) == "4.59"
    assert "| NoRGa GELU | 94.05 | 94.63 | 90.74 | 80.54 |" in text
    assert [paper_results.gate_ablation(d, b, "norga", "gelu").mean
            for d in ("cifar100", "cub") for b in ("sup21k", "ibot21k")] == [94.05, 94.63, 90.74, 80.54]
    assert paper_results.gate_ablation("cub", "ibot21k", "hide", None).mean == 78.23
    assert paper_results.gate_ablation("cifar100", "sup21k", "norga", "linear") is None
