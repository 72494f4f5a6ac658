"""The rough edges a new user hit in the first hour, each with the command that showed it: late validation of
settings that relate several keys, tracebacks for unwritable folders, refused attempts cluttering the report,
Hydra's generic help, plots that do not compare, 0-based task numbers, torchrun log noise and scratch folders,
and a resume refusal that buried the method. All config-only or on hand-written metrics: seconds each."""

import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from norga.config import config_problems, register
from norga.engine import ranks
from norga.engine.record import ResumeMismatchError, refuse_changed_config
from norga.output_dirs import OutputDirError, check_writable, explain_os_error

ROOT = Path(__file__).resolve().parents[1]


def app(*args, cwd=ROOT):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    return done, time.perf_counter() - start


def compose_cfg(overrides=()):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def problems(overrides):
    return dict(config_problems(compose_cfg(overrides)))


# ---- 1. settings that relate keys are checked before anything is built ------------------------------------
def test_top_k_above_the_pool_fails_fast_without_a_folder(tmp_path):
    """``method=l2p method.top_k=100`` was refused after the model was built (8 s), leaving a run folder."""
    run_dir = tmp_path / "run"
    done, seconds = app("method=l2p", "method.top_k=100", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 1
    assert "method.top_k: 100 is larger than the pool (method.pool_size=30)" in done.stderr, done.stderr
    assert "(command line: method.top_k=100)" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "threads:" not in done.stdout + done.stderr
    # about 1 s on an idle machine (the issue asks under 3 s); the bound leaves room for a loaded CI worker, and
    # "threads:" (logged once the run is built) missing above is what shows nothing was built
    assert seconds < 20, f"{seconds:.1f}s"
    assert not any(tmp_path.iterdir())


def test_sweep_preflight_refuses_a_job_whose_keys_do_not_combine(tmp_path):
    """A sweep whose second job has ``method.top_k=100`` passed the preflight and failed minutes later."""
    done, seconds = app("-m", "method=l2p", "method.top_k=5,100", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                        cwd=tmp_path)
    assert done.returncode == 1
    assert "the sweep cannot start" in done.stderr and "config of the job method.top_k=100" in done.stderr
    assert "method.top_k: 100 is larger than the pool" in done.stderr
    assert seconds < 10 and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(("overrides", "key", "text"), [
    (["method=dualprompt", "method.top_k=6"], "method.top_k", "6 is larger than the pool (method.pool_size=5, "
                                                              "one prompt per task)"),
    (["method=l2p", "method.prompt_mask=true", "method.pool_size=20"], "method.pool_size",
     "20 is too small for method.prompt_mask"),
    (["method=l2p", "gate=tanh"], "method.gate", "method=l2p takes no gate"),
    (["method=hide", "gate=gelu"], "method.gate", "method=hide takes no gate"),
    (["method=norga", "method.gate=null"], "method.gate", "method=norga needs a gate"),
    (["method=coda", "method.batchwise_prompt=true"], "method.batchwise_prompt", "selects no prompts"),
    (["method=simplecil", "method.batchwise_prompt=true"], "method.batchwise_prompt", "selects no prompts"),
    (["method=ranpac", "method.batchwise_prompt=true"], "method.batchwise_prompt", "selects no prompts"),
    (["method=ranpac", "method.ridge_fit_fraction=1.0"], "method.ridge_fit_fraction", "must be < 1.0"),
    (["method=ranpac", "method.first_session_adaptation=true", "method.adaptation.dropout=1.0"],
     "method.adaptation.dropout", "must be < 1.0"),
    (["method=coda", "method.prompt_length=7"], "method.prompt_length", "must be even"),
    (["method=coda", "method.pool_size=3"], "method.pool_size", "cannot be shared by 5 tasks"),
    (["method=dualprompt", "method.g_prompt_layers=[0,2]"], "method.g_prompt_layers", "blocks [2] are in both"),
])
def test_rules_between_keys_are_config_problems(overrides, key, text):
    found = problems(overrides)
    assert text in found.get(key, ""), found


def test_the_shipped_methods_and_a_joint_bound_break_no_rule():
    for method in sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml")):
        assert problems([f"method={method}"]) == {}, method
        assert problems([f"method={method}", "+bound=joint"]) == {}, method


# ---- 2. an unwritable output folder is one paragraph ----------------------------------------------------------
def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in (root ignores permission bits: /sys refuses it)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        check_writable("/sys/norga-probe", "hydra.run.dir")
    except OutputDirError:
        return Path("/sys")
    pytest.skip("no read-only folder available to root here")


def test_read_only_run_dir_gives_one_paragraph(tmp_path):
    """A read-only ``hydra.run.dir`` printed a raw traceback ending in ``OSError: [Errno 30]``."""
    folder = _unwritable(tmp_path)
    done, _ = app(f"hydra.run.dir={folder}/run", cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "OSError" not in out, out
    assert done.stderr.startswith(f"error: the output folder {folder}/run (hydra.run.dir) cannot be created")
    assert "Choose a folder you can write" in done.stderr and done.stderr.count("\n") == 1


def test_a_file_in_the_path_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "run", "hydra.run.dir")
    check_writable(tmp_path / "new" / "run", "hydra.run.dir")  # creatable: fine, and nothing was left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_file_system_errors_reaching_the_app_are_explained():
    text = explain_os_error(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"))
    assert "/mnt/ro/run: Read-only file system" in text and "hydra.run.dir=<folder>" in text
    assert "free space" in explain_os_error(OSError(errno.ENOSPC, "No space left on device", "/x"))


@pytest.mark.parametrize(("override", "first_line"), [
    ("seed=${foo}", "error: the config does not resolve: Interpolation key 'foo' not found."),
    ("device=cuda", "error: device=cuda asked for, but torch sees no CUDA device"),
])
def test_other_user_errors_are_one_paragraph(override, first_line, tmp_path):
    if override == "device=cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    done, _ = app(override, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith(first_line), done.stderr


# ---- 3. the report separates failed, refused and unfinished runs --------------------------------------------
def _metrics(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True)
    base = {"dataset": "digits", "backbone": "tiny", "method": "l2p", "gate": None, "seed": 42, "num_tasks": 2,
            "acc_matrix": []}
    (folder / "metrics.json").write_text(json.dumps({**base, **fields}))
    return folder


def test_report_skips_refused_runs_and_separates_failed_from_unfinished(tmp_path, capsys):
    """An hour of trying things left 11 "failed" runs in ``python -m norga.report outputs/``."""
    from norga.report import main

    for n in range(3):
        _metrics(tmp_path / f"attempt{n}", finished=False, refused=True, error="CIFAR-100 not found: expected x")
    _metrics(tmp_path / "crashed", finished=False, error="non-finite loss nan at task 1", acc_matrix=[[90.0]])
    _metrics(tmp_path / "killed", finished=False, acc_matrix=[[90.0]])
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    failed, unfinished = out.split("## Failed runs")[1].split("## Unfinished runs")
    assert "/crashed`" in failed and "/attempt" not in failed and "/killed`" not in failed
    assert "/killed`" in unfinished.split("Skipped")[0] and "/attempt" not in unfinished
    assert "Skipped 3 run folder(s) refused before training started" in out
    assert "CIFAR-100 not found" in out.split("Skipped")[1]


# ---- 5. norga's own help page; a mistyped option is answered -----------------------------------------------
def test_help_is_norgas_page_with_the_common_commands():
    """``python run.py --help`` printed Hydra's dump with 93 preset names on one line."""
    done, _ = app("--help")
    assert done.returncode == 0
    page = done.stdout
    assert page.startswith("norga:")
    methods = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml"))
    assert "method     " + ", ".join(methods) in page and "inflora" in methods
    assert "python -m norga.report outputs/" in page and "resume=true" in page
    assert "+sweep=methods" in page and "dataset=imr backbone=ibot21k method=norga" in page
    assert "README.md" in page and "docs/algorithm.md" in page and "--hydra-help" in page
    assert "cifar100_dino_l2p" not in page  # presets are summarised, not listed


def test_mistyped_option_names_the_closest_one():
    """``method=l2q`` listed the options but did not say "did you mean l2p"."""
    done, _ = app("method=l2q")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: method=l2q: method has no option 'l2q'; did you mean l2p?")


# ---- 6. one figure compares the methods; tasks numbered from 1 ------------------------------------------------
METHODS = ("l2p", "dualprompt", "sprompt", "coda", "hide", "norga", "simplecil", "ranpac")


def _sweep_outputs(root: Path) -> None:
    """What ``+sweep=methods`` and ``+sweep=joint`` on the embedded default leave, shrunk to metrics.json."""
    rng = np.random.default_rng(0)
    for m, method in enumerate(METHODS):
        for seed in (40, 42, 44):
            acc = [[round(float(v), 2) for v in 95 - 3 * m * i / 5 - rng.random(i + 1)] for i in range(5)]
            _metrics(root / f"{method}_{seed}", finished=True, method=method, seed=seed, num_tasks=5,
                     acc_matrix=acc, gate="tanh" if method == "norga" else None)
        _metrics(root / f"joint_{method}", finished=True, method=method, seed=42, num_tasks=1, bound="joint",
                 acc_matrix=[[97.0 + m / 10]], gate="tanh" if method == "norga" else None)


def test_report_draws_one_comparison_figure_for_the_methods_sweep(tmp_path, capsys):
    """The report wrote one figure per method, each with its own y-scale; none put the methods side by side."""
    from norga.metrics.comparison import comparison_figure, joint_bound, protocols
    from norga.report import build_report, find_run_dirs, main

    _sweep_outputs(tmp_path / "outputs")
    assert main([str(tmp_path / "outputs"), "--plot", str(tmp_path / "figures")]) == 0
    assert "comparison: " in capsys.readouterr().out
    assert (tmp_path / "figures" / "compare_digits_tiny_T5.png").stat().st_size > 10_000

    groups = build_report(find_run_dirs([tmp_path / "outputs"])).groups
    (members,) = protocols(groups).values()
    bound = joint_bound("digits", "tiny", groups)
    assert bound == (pytest.approx(97.7), "ranpac (joint)")  # the best joint run
    fig = comparison_figure(members, bound, "digits")
    curves, *heatmaps = [ax for ax in fig.get_axes() if ax.get_label() != "<colorbar>"]
    assert len(curves.get_lines()) == len(METHODS) + 1  # every method and the joint bound, on one axes
    assert [t.get_text() for t in curves.get_xticklabels()][:1] == ["1"]
    shown = [ax for ax in heatmaps if ax.images]
    assert len(shown) == len(METHODS)
    assert len({ax.images[0].get_clim() for ax in shown}) == 1  # one colour scale
    assert [t.get_text() for t in shown[0].get_xticklabels()][0] == "1"


def test_wandb_heatmap_numbers_tasks_from_one():
    from norga.metrics.plots import accuracy_matrix_figure

    fig = accuracy_matrix_figure([[90.0], [80.0, 85.0]])
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2"]


# ---- 7. torchrun: rank 0's lines only; scratch folders removed (the whole run: test_distributed_run) -------
def test_other_ranks_show_warnings_only(monkeypatch):
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        monkeypatch.setenv("RANK", "1")
        ranks.quiet_other_ranks()
        assert handler.level == logging.WARNING
        record = logging.LogRecord("norga", logging.WARNING, __file__, 0, "slow", None, None)
        handler.filter(record)
        assert record.msg == "[rank 1] slow"
    finally:
        root.removeHandler(handler)


def test_scratch_folders_of_dead_processes_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"norga-rank1-{int(done.stdout)}-abc"
    alive = tmp_path / f"norga-rank1-{os.getpid()}-abc"
    dead.mkdir()
    alive.mkdir()
    assert ranks.remove_stale_scratch(str(tmp_path)) == [dead]
    assert alive.exists() and not dead.exists()


def test_scratch_run_dir_is_removed_at_exit():
    code = ("import os; os.environ['RANK'] = '1'; from norga.engine.ranks import scratch_run_dir; "
            "print(scratch_run_dir()); raise SystemExit(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 3
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("norga-rank1-") and folder.parent == Path(tempfile.gettempdir())
    assert not folder.exists()


# ---- 8. a refused resume names the run's identity first --------------------------------------------------
def test_wrong_method_resume_names_the_method_first(tmp_path):
    """The wrong-method resume refusal listed 36 differing keys alphabetically, ``method.name`` buried."""
    norga = OmegaConf.to_container(compose_cfg(["method=norga"]), resolve=True)
    l2p = OmegaConf.to_container(compose_cfg(["method=l2p", "seed=1"]), resolve=True)
    with pytest.raises(ResumeMismatchError) as info:
        refuse_changed_config(tmp_path, norga, l2p)
    lines = [line.strip() for line in str(info.value).splitlines() if line.startswith("  ")]
    assert len(lines) > 10
    assert lines[0] == "method.name: 'norga' -> 'l2p'" and lines[1] == "seed: 42 -> 1"
    assert lines[2].startswith("method.gate:")
