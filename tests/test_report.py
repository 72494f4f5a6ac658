"""norga.report on hand-made run directories: grouping, paper order, mean ± std, CSV, duplicate seeds,
failed and unfinished runs, joint bounds, --paper, --plot."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from norga import paper_results
from norga.report import main

REPO = Path(__file__).resolve().parents[1]
PAPER_MD = REPO / "docs" / "paper_results.md"


def _matrix(num_tasks: int, done: int | None = None, value: float = 90.0) -> list[list[float]]:
    return [[value] * (i + 1) for i in range(num_tasks if done is None else done)]


def write_run(path: Path, *, dataset, backbone, method, gate, seed, fa, ca, ffm, tii,
              num_tasks=10, finished=True, done=None, overrides=None, extra=None, mtime=None) -> Path:
    """A run directory as norga.engine.run writes it (metrics values as given: the report uses them as is).

    ``extra`` adds metrics.json keys (``bound``, ``error``); ``mtime`` sets metrics.json's modification time.
    """
    path.mkdir(parents=True)
    metrics = {"finished": finished, "dataset": dataset, "backbone": backbone, "method": method, "gate": gate,
               "seed": seed, "num_tasks": num_tasks, "acc_matrix": _matrix(num_tasks, done, fa),
               "final_avg_acc": fa, "cum_avg_acc": ca, "forgetting": ffm, "tii_acc": tii, **(extra or {})}
    (path / "metrics.json").write_text(json.dumps(metrics))
    if mtime is not None:
        os.utime(path / "metrics.json", (mtime, mtime))
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
# the paper's order: HiDe-Prompt before NoRGa, whatever the datasets
CSV = (
    "dataset,backbone,method,gate,num_tasks,overrides,n_seeds,seeds,fa_mean,fa_std,ca_mean,ca_std,"
    "ffm_mean,ffm_std,tii_mean,tii_std\n"
    "imr,ibot21k,hide,-,10,,2,42 44,70.75,0.75,73.50,0.50,5.50,0.50,80.50,0.50\n"
    "cifar100,sup21k,norga,tanh,10,,3,40 42 44,95.00,0.82,96.00,0.41,2.00,0.82,91.00,0.82\n"
)


def test_markdown_table_and_unfinished_runs(runs, capsys):
    assert main([str(runs)]) == 0
    out = capsys.readouterr().out
    results, rest = out.split("## Failed runs")
    failed, unfinished = rest.split("## Unfinished runs")
    lines = results.splitlines()
    assert lines.index(ROW_HIDE) < lines.index(ROW_NORGA)
    assert "ddof=0" in results
    assert failed.strip() == "None."
    s46 = runs / "cifar100/sup21k/norga/s46"
    crashed = runs / "imr/sup21k/norga/crashed"
    broken, *others = unfinished.strip().splitlines()
    assert broken.startswith(f"- `{runs / 'broken'}` (") and "?/? tasks): unreadable metrics.json" in broken
    assert others == [
        f"- `{s46}` (cifar100/sup21k/norga/tanh seed=46, 3/10 tasks): not finished",
        f"- `{crashed}` (imr/sup21k/norga/tanh seed=40, 0/10 tasks): no metrics.json (not started properly, "
        "or still in or killed in its first task)",
    ]


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
    header, hide, norga = capsys.readouterr().out.splitlines()
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


def test_duplicate_seed_uses_the_newest_run(tmp_path, capsys):
    common = dict(dataset="cub", backbone="sup21k", method="hide", gate=None, ca=1.0, ffm=1.0, tii=1.0)
    # seed 42 twice: the re-run "a_rerun" is newer although its path sorts first
    old = write_run(tmp_path / "z_first", seed=42, fa=80.0, mtime=1_000_000, **common)
    new = write_run(tmp_path / "a_rerun", seed=42, fa=82.0, mtime=2_000_000, **common)
    write_run(tmp_path / "s44", seed=44, fa=84.0, mtime=1_500_000, **common)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # FA over 82 and 84 = 83.00 ± 1.00 (averaging in the old 80 as well would give 82.00 ± 1.63)
    assert "| cub | sup21k | hide | - | 10 | 2 | 42, 44 | 83.00 ± 1.00 |" in out
    duplicates = out.split("## Duplicate seeds")[1].split("## Failed runs")[0]
    assert f"- cub/sup21k/hide/- T=10 seed 42: used `{new}`; ignored `{old}`" in duplicates.splitlines()

    assert main([str(tmp_path), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith("cub,sup21k,hide,-,10,,2,42 44,83.00,1.00,")
    assert f"duplicate seed: cub/sup21k/hide/- T=10 seed 42: used {new}; ignored {old}" in captured.err


def test_duplicate_seed_is_an_error_with_strict(tmp_path, capsys):
    common = dict(dataset="cub", backbone="sup21k", method="hide", gate=None, seed=42, ca=1.0, ffm=1.0,
                  tii=1.0)
    old = write_run(tmp_path / "a", fa=80.0, mtime=1_000_000, **common)
    new = write_run(tmp_path / "b", fa=82.0, mtime=2_000_000, **common)
    assert main([str(tmp_path), "--strict"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--strict" in captured.err
    assert f"  cub/sup21k/hide/- T=10 seed 42: {new}, {old}" in captured.err.splitlines()
    # the same seed in different rows is no duplicate
    write_run(tmp_path / "c", fa=82.0, **{**common, "backbone": "ibot21k"})
    (tmp_path / "a" / "metrics.json").unlink()
    assert main([str(tmp_path), "--strict"]) == 0


def test_failed_and_unfinished_runs_are_listed_apart(tmp_path, capsys):
    common = dict(dataset="cifar100", backbone="sup21k", method="l2p", gate=None, fa=80.0, ca=85.0, ffm=2.0,
                  tii=None)
    write_run(tmp_path / "done", seed=40, **common)
    oom = write_run(tmp_path / "oom", seed=42, finished=False, done=3, **common,
                    extra={"error": "CUDA out of memory.\nTried to allocate 2 GiB"})
    killed = write_run(tmp_path / "killed", seed=44, finished=False, done=5, **common)
    # never got a metrics.json: Hydra's folder, and a log with or without an error line
    nan, started, traceback, bare = (tmp_path / name for name in ("nan", "started", "traceback", "bare"))
    for run_dir in (nan, started, traceback, bare):
        (run_dir / ".hydra").mkdir(parents=True)
    for run_dir in (nan, started, traceback):
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 42\ndataset:\n  name: imr\n  num_tasks: 10\n")
    info = "[2024-05-01 10:00:00,000][norga.engine.run][INFO] - task 1/10: acc [90.0] | ERROR rate low\n"
    (nan / "run.log").write_text(
        info + "[2024-05-01 10:05:00,000][norga.engine.run][ERROR] - loss is nan in epoch 3 (checkpoint: x)\n"
        "[2024-05-01 10:05:01,000][norga.engine.run][ERROR] - a later error\n")
    (started / "run.log").write_text(info)
    (traceback / "run.log").write_text('Traceback (most recent call last):\n  File "run.py", line 1, in <module>\n'
                                       "    main()\nFileNotFoundError: no data under /data/imr\n")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results, rest = out.split("## Failed runs")
    failed, unfinished = rest.split("## Unfinished runs")
    table = [line for line in results.splitlines() if line.startswith("| cifar100")]
    assert table == ["| cifar100 | sup21k | l2p | - | 10 | 1 | 40 | 80.00 ± 0.00 | 85.00 ± 0.00 | 2.00 ± 0.00 "
                     "| n/a |"]
    assert failed.strip().splitlines() == [
        f"- `{nan}` (imr/?/?/? seed=42, 0/10 tasks): loss is nan in epoch 3 (checkpoint: x)",
        f"- `{oom}` (cifar100/sup21k/l2p/- seed=42, 3/10 tasks): CUDA out of memory.",
        f"- `{traceback}` (imr/?/?/? seed=42, 0/10 tasks): FileNotFoundError: no data under /data/imr",
    ]
    no_metrics = "no metrics.json (not started properly, or still in or killed in its first task)"
    assert unfinished.strip().splitlines() == [
        f"- `{bare}` (?/?/?/? seed=?, 0/? tasks): {no_metrics}",
        f"- `{killed}` (cifar100/sup21k/l2p/- seed=44, 5/10 tasks): not finished",
        f"- `{started}` (imr/?/?/? seed=42, 0/10 tasks): {no_metrics}",
    ]
    assert main([str(tmp_path), "--format", "csv"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"failed: {oom} (cifar100/sup21k/l2p/- seed=42, 3/10 tasks): CUDA out of memory." in err
    assert f"unfinished: {killed} (cifar100/sup21k/l2p/- seed=44, 5/10 tasks): not finished" in err


def test_null_tii_is_not_averaged(tmp_path, capsys):
    common = dict(dataset="cifar100", backbone="sup21k", gate=None, ca=90.0, ffm=1.0)
    for seed in (40, 42):  # CODA-Prompt infers no task: TII null in every seed
        write_run(tmp_path / f"coda{seed}", method="coda", seed=seed, fa=86.0, tii=None, **common)
    # one seed's TII is null: the mean is over the other seed only, and says so
    write_run(tmp_path / "hide40", method="hide", seed=40, fa=92.0, tii=91.0, **common)
    write_run(tmp_path / "hide42", method="hide", seed=42, fa=92.0, tii=None, **common)
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ("| cifar100 | sup21k | coda | - | 10 | 2 | 40, 42 | 86.00 ± 0.00 | 90.00 ± 0.00 | 1.00 ± 0.00 "
            "| n/a |") in lines
    assert ("| cifar100 | sup21k | hide | - | 10 | 2 | 40, 42 | 92.00 ± 0.00 | 90.00 ± 0.00 | 1.00 ± 0.00 "
            "| 91.00 ± 0.00 (1 of 2 seeds) |") in lines
    assert main([str(tmp_path), "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert rows == ["cifar100,sup21k,coda,-,10,,2,40 42,86.00,0.00,90.00,0.00,1.00,0.00,n/a,n/a",
                    "cifar100,sup21k,hide,-,10,,2,40 42,92.00,0.00,90.00,0.00,1.00,0.00,91.00,0.00"]


def test_joint_rows_and_the_gap_to_them(tmp_path, capsys):
    def run(name, dataset, method, gate, seed, fa, bound=None, num_tasks=10):
        extra = {} if bound is False else {"bound": bound}  # absent and null both mean continual
        write_run(tmp_path / name, dataset=dataset, backbone="sup21k", method=method, gate=gate, seed=seed,
                  fa=fa, ca=fa, ffm=0.0, tii=None, num_tasks=num_tasks, extra=extra)

    run("n40", "cifar100", "norga", "tanh", 40, 94.0, bound=False)
    run("n42", "cifar100", "norga", "tanh", 42, 95.0)  # FA 94.50
    run("nj", "cifar100", "norga", "tanh", 40, 97.25, bound="joint", num_tasks=1)
    run("h", "cifar100", "hide", None, 42, 92.0)  # no HiDe joint row: the NoRGa one, named
    run("l", "imr", "l2p", None, 42, 67.0)
    run("sj", "imr", "simplecil", None, 42, 80.0, bound="joint", num_tasks=1)
    run("c", "cub", "hide", None, 42, 86.0)  # no joint row for CUB
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "sup21k" in line]
    tail = "| 0.00 ± 0.00 | n/a |"  # FFM, TII
    assert rows == [
        # 67.00 - 80.00 (the only joint row for ImageNet-R, SimpleCIL's: named)
        f"| imr | sup21k | l2p | - | 10 | 1 | 42 | 67.00 ± 0.00 | 67.00 ± 0.00 {tail} -13.00 (vs simplecil joint) |",
        # 92.00 - 97.25
        f"| cifar100 | sup21k | hide | - | 10 | 1 | 42 | 92.00 ± 0.00 | 92.00 ± 0.00 {tail} "
        "-5.25 (vs norga/tanh joint) |",
        f"| cub | sup21k | hide | - | 10 | 1 | 42 | 86.00 ± 0.00 | 86.00 ± 0.00 {tail} n/a |",
        # 94.50 - 97.25, its own method's joint row: not named
        f"| cifar100 | sup21k | norga | tanh | 10 | 2 | 40, 42 | 94.50 ± 0.50 | 94.50 ± 0.50 {tail} -2.75 |",
        f"| cifar100 | sup21k | norga (joint) | tanh | 1 | 1 | 40 | 97.25 ± 0.00 | 97.25 ± 0.00 {tail} n/a |",
        f"| imr | sup21k | simplecil (joint) | - | 1 | 1 | 42 | 80.00 ± 0.00 | 80.00 ± 0.00 {tail} n/a |",
    ]
    assert "| TII | FA - joint FA |" in out

    # the published numbers are for continual 10-task runs: nothing to compare a joint row with
    assert main([str(tmp_path), "--paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    joint = next(line for line in lines if "| norga (joint) |" in line)
    assert joint.endswith("| n/a |" + " n/a |" * 8)

    assert main([str(tmp_path), "--format", "csv"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.endswith(",tii_mean,tii_std,bound,joint_ref,joint_gap_fa")
    assert [row.split(",")[2:3] + row.split(",")[-3:] for row in rows] == [
        ["l2p", "", "simplecil", "-13.00"], ["hide", "", "norga/tanh", "-5.25"], ["hide", "", "", "n/a"],
        ["norga", "", "norga/tanh", "-2.75"], ["norga", "joint", "", "n/a"], ["simplecil", "joint", "", "n/a"]]


def test_joint_reference_prefers_the_same_method(tmp_path, capsys):
    common = dict(dataset="cifar100", backbone="sup21k", seed=42, ca=1.0, ffm=0.0, tii=None)
    write_run(tmp_path / "hide", method="hide", gate=None, fa=92.0, **common)
    write_run(tmp_path / "hide_joint", method="hide", gate=None, fa=95.0, num_tasks=1,
              extra={"bound": "joint"}, **common)
    write_run(tmp_path / "norga_joint", method="norga", gate="tanh", fa=97.0, num_tasks=1,
              extra={"bound": "joint"}, **common)
    assert main([str(tmp_path)]) == 0
    hide = next(line for line in capsys.readouterr().out.splitlines() if "| hide | - | 10 |" in line)
    assert hide.endswith("| n/a | -3.00 |")  # 92 - 95 (HiDe's own joint row), not 92 - 97


def test_joint_reference_order_of_preference():
    from norga.report import Group, GroupKey, joint_reference

    def joint(method, gate, variant="", dataset="cifar100"):
        return Group(GroupKey(dataset, "sup21k", method, gate, 1, variant, bound="joint"))

    row = GroupKey("cifar100", "sup21k", "norga", "tanh", 10, "optimizer.lr=0.01")
    other_data = joint("norga", "tanh", "optimizer.lr=0.01", dataset="imr")
    other_method = joint("gated", "tanh", "optimizer.lr=0.01")
    other_gate = joint("norga", "sigmoid", "optimizer.lr=0.01")
    other_variant = joint("norga", "tanh")
    same = joint("norga", "tanh", "optimizer.lr=0.01")
    # method first, then gate, then overrides; never another dataset
    candidates = [other_data, other_method, other_gate, other_variant, same]
    for best in (same, other_variant, other_gate, other_method):
        assert joint_reference(row, candidates) is best
        candidates.remove(best)
    assert joint_reference(row, candidates) is None
    assert joint_reference(same.key, [same]) is None  # a joint row has no gap to itself


def test_paper_rows_for_every_method_in_the_papers_order(tmp_path, capsys):
    def run(name, dataset, backbone, method, fa, ca, tii, gate=None):
        write_run(tmp_path / name, dataset=dataset, backbone=backbone, method=method, gate=gate, seed=42,
                  fa=fa, ca=ca, ffm=1.0, tii=tii)

    # folder names sort in a different order than the paper's
    run("a", "cifar100", "sup21k", "ranpac", 90.0, 93.0, None)
    run("b", "cifar100", "sup21k", "simplecil", 88.0, 92.0, None)
    run("c", "cifar100", "sup21k", "hide", 92.0, 94.0, 80.0)
    run("d", "imr", "ibot", "coda", 66.0, 74.0, None)
    run("e", "cifar100", "ibot21k", "sprompt", 80.0, 86.0, 70.0)
    run("f", "imr", "sup21k", "dualprompt", 71.0, 75.0, 60.0)
    run("g", "imr", "sup21k", "l2p", 67.0, 72.5, None)
    run("h", "cifar100", "sup21k", "l2p", 84.0, 88.0, None)
    assert main([str(tmp_path), "--paper"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    one = "| 10 | 1 | 42 |"
    ffm = "| 1.00 ± 0.00 |"
    no_ffm = "| n/a | n/a | n/a | n/a |"  # no published FFM or gate ablation for these rows
    unpublished = " n/a |" * 8
    assert rows == [
        # published FA 83.06 ± 0.17, CA 88.27 ± 0.71: 84 - 83.06 = +0.94, 88 - 88.27 = -0.27
        f"| cifar100 | sup21k | l2p | - {one} 84.00 ± 0.00 | 88.00 ± 0.00 {ffm} n/a "
        f"| 83.06 ± 0.17 | +0.94 | 88.27 ± 0.71 | -0.27 {no_ffm}",
        # 67.53 ± 0.44, 71.98 ± 0.52
        f"| imr | sup21k | l2p | - {one} 67.00 ± 0.00 | 72.50 ± 0.00 {ffm} n/a "
        f"| 67.53 ± 0.44 | -0.53 | 71.98 ± 0.52 | +0.52 {no_ffm}",
        # 70.93 ± 0.08, 75.67 ± 0.52
        f"| imr | sup21k | dualprompt | - {one} 71.00 ± 0.00 | 75.00 ± 0.00 {ffm} 60.00 ± 0.00 "
        f"| 70.93 ± 0.08 | +0.07 | 75.67 ± 0.52 | -0.67 {no_ffm}",
        # 79.14 ± 0.65, 85.85 ± 0.17
        f"| cifar100 | ibot21k | sprompt | - {one} 80.00 ± 0.00 | 86.00 ± 0.00 {ffm} 70.00 ± 0.00 "
        f"| 79.14 ± 0.65 | +0.86 | 85.85 ± 0.17 | +0.15 {no_ffm}",
        # iBOT-1K: 66.56 ± 0.68, 73.14 ± 0.57
        f"| imr | ibot | coda | - {one} 66.00 ± 0.00 | 74.00 ± 0.00 {ffm} n/a "
        f"| 66.56 ± 0.68 | -0.56 | 73.14 ± 0.57 | +0.86 {no_ffm}",
        # 92.61 ± 0.28, 94.03 ± 0.01, FFM 1.50, no-gate ablation 92.61
        f"| cifar100 | sup21k | hide | - {one} 92.00 ± 0.00 | 94.00 ± 0.00 {ffm} 80.00 ± 0.00 "
        "| 92.61 ± 0.28 | -0.61 | 94.03 ± 0.01 | -0.03 | 1.50 | -0.50 | 92.61 | -0.61 |",
        # SimpleCIL and RanPAC are not in the paper
        f"| cifar100 | sup21k | simplecil | - {one} 88.00 ± 0.00 | 92.00 ± 0.00 {ffm} n/a |{unpublished}",
        f"| cifar100 | sup21k | ranpac | - {one} 90.00 ± 0.00 | 93.00 ± 0.00 {ffm} n/a |{unpublished}",
    ]


def test_published_table1_needs_the_published_gate():
    # Table 1 names no gate for NoRGa (any gate matches); every other method is published without one
    assert paper_results.main_table("cifar100", "sup21k", "norga", "FA", "gelu").mean == 94.48
    assert paper_results.main_table("cifar100", "sup21k", "l2p", "FA").mean == 83.06
    assert paper_results.main_table("cifar100", "sup21k", "l2p", "FA", "tanh") is None
    assert paper_results.main_table("cifar100", "sup21k", "simplecil", "FA") is None


def test_joint_rows_plot_apart():
    from norga.report import GroupKey

    continual = GroupKey("cifar100", "sup21k", "norga", "tanh", 10)
    joint = GroupKey("cifar100", "sup21k", "norga", "tanh", 1, bound="joint")
    assert (continual.file_stem, joint.file_stem) == ("cifar100_sup21k_norga_tanh_T10",
                                                      "cifar100_sup21k_norga_tanh_joint_T1")


def _numbers_in_paper_md(text: str) -> dict[tuple[str, ...], paper_results.Published]:
    """Every number of docs/paper_results.md, keyed as norga/assets/paper_results.csv keys them."""
    import re

    found: dict[tuple[str, ...], paper_results.Published] = {}
    columns = [("CIFAR-100", "FA"), ("CIFAR-100", "CA"), ("ImageNet-R", "FA"), ("ImageNet-R", "CA")]
    for m in re.finditer(r"^\| (Sup-21K|iBOT-21K|iBOT-1K) \| ([^|]+?) \| (.*) \|$", text, re.M):
        cells = re.findall(r"(\d+\.\d+) \+- (\d+\.\d+)", m[3])
        assert len(cells) == len(columns), m[0]
        for (dataset, metric), (mean, std) in zip(columns, cells, strict=True):
            found["table1", dataset, m[1], m[2], "", metric] = paper_results.Published(float(mean), float(std))
    ffm = re.search(r"^FFM \(Sup-21K\): (.*)\.$", text, re.M)
    assert ffm, "the FFM line"
    for part in ffm[1].split("; "):
        method = part.split()[0]
        for mean, dataset in re.findall(r"(\d+\.\d+) \(([^)]+)\)", part):
            found["table1", dataset, "Sup-21K", method, "", "FFM"] = paper_results.Published(float(mean))
    header = re.search(r"^\| \| (CIFAR-100 .*) \|$", text, re.M)
    assert header, "the gate-ablation table"
    settings = [cell.rsplit(" ", 1) for cell in header[1].split(" | ")]
    for m in re.finditer(r"^\| (HiDe-Prompt \(no gate\)|NoRGa \w+) \| (.*) \|$", text, re.M):
        method, gate = ("HiDe-Prompt", "none") if m[1].startswith("HiDe") else ("NoRGa", m[1].split()[1].lower())
        for (dataset, backbone), mean in zip(settings, m[2].split(" | "), strict=True):
            found["gate_ablation", dataset, backbone, method, gate, "FA"] = paper_results.Published(float(mean))
    return found


def _reachable_by_config_names() -> dict[tuple[str, ...], paper_results.Published]:
    """Every number the report can show (``main_table``/``gate_ablation`` over the config names), keyed by the
    paper's names as docs/paper_results.md is."""
    pr = paper_results
    found: dict[tuple[str, ...], paper_results.Published] = {}
    for dataset, backbone, method in itertools.product(pr.DATASETS, pr.BACKBONES, pr.METHODS):
        names = (pr.DATASETS[dataset], pr.BACKBONES[backbone], pr.METHODS[method])
        for metric in ("FA", "CA", "FFM"):
            if (number := pr.main_table(dataset, backbone, method, metric)) is not None:
                found[("table1", *names, "", metric)] = number
        for gate in [None] if method == "hide" else ["tanh", "sigmoid", "gelu"]:
            if (number := pr.gate_ablation(dataset, backbone, method, gate)) is not None:
                found[("gate_ablation", *names, gate or "none", "FA")] = number
    return found


def test_packaged_numbers_match_paper_results_md():
    """norga/assets/paper_results.csv holds exactly the numbers of docs/paper_results.md, each under the
    table, dataset, backbone, method, gate and metric it appears under there."""
    assert PAPER_MD.is_file(), f"{PAPER_MD} is missing: it is the transcription the packaged numbers come from"
    published = _numbers_in_paper_md(PAPER_MD.read_text())
    assert len(published) == 3 * 6 * 2 * 2 + 3 + 4 * 4  # Table 1 FA/CA, 3 FFM values, the gate ablation
    assert _reachable_by_config_names() == published
    # config names reach the paper's
    assert str(paper_results.main_table("imr", "sup21k", "norga", "FFM")) == "4.59"
    assert str(paper_results.main_table("cifar100", "ibot", "hide", "CA")) == "95.02 ± 0.01"
    assert [paper_results.gate_ablation(d, b, "norga", "gelu").mean
            for d in ("cifar100", "cub") for b in ("sup21k", "ibot21k")] == [94.05, 94.63, 90.74, 80.54]
    assert paper_results.gate_ablation("cub", "ibot21k", "hide", None).mean == 78.23
    assert paper_results.gate_ablation("cifar100", "sup21k", "norga", "linear") is None
