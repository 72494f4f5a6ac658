"""Sweeps check every job before the first one starts (norga.preflight): one report lists every invalid
config, missing dataset and missing checkpoint, and no job folder is created. Job folders are one level deep
whatever the overrides hold, and a machine without network never waits on the hub's retries."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict, read_write

from norga.config import register, safe_dirname

ROOT = Path(__file__).resolve().parents[1]
PAPER_BACKBONES = ("sup21k", "ibot21k", "ibot", "dino", "mocov3")


def app(*args, env=None, cwd=ROOT):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    return done, time.perf_counter() - start


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No data, no checkpoints, an empty Hugging Face cache, the hub off (as on a machine without network)."""
    for name in ("data", "checkpoints", "hf"):
        (tmp_path / name).mkdir()
    return {"NORGA_DATA_DIR": str(tmp_path / "data"), "NORGA_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}


def test_paper_grid_without_data_fails_at_once_listing_everything_missing(tmp_path):
    """``+sweep=paper_grid`` used to spend minutes failing 60 jobs one by one, print one error at the end and
    leave 60 job folders."""
    sweep_dir = tmp_path / "sweep"
    done, seconds = app("+sweep=paper_grid", f"hydra.sweep.dir={sweep_dir}", env=offline_env(tmp_path),
                        cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert seconds < 30, f"{seconds:.1f}s"
    assert not sweep_dir.exists(), "no job folder, no multirun.yaml"
    assert "Traceback" not in out
    report = done.stderr
    assert report.startswith("error: the sweep cannot start: 60 jobs checked")
    assert "CIFAR-100 not found" in report and "ImageNet-R not found" in report
    assert "30 jobs with dataset=cifar100" in report and "30 jobs with dataset=imr" in report
    for backbone in PAPER_BACKBONES:
        assert f"backbone of 12 jobs with backbone={backbone}:\nbackbone '{backbone}'" in report
    assert report.count("dataset.root=/path/to/data") == 1, "where to point norga is said once"


def test_an_invalid_value_in_one_job_stops_the_sweep_before_it_starts(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done, seconds = app("-m", "optimizer.lr=0.01,-1", "logger=none", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert done.returncode == 1 and seconds < 30
    assert "config of the job optimizer.lr=-1:\n  optimizer.lr: -1.0 must be > 0" in done.stderr
    assert "optimizer.lr=0.01:" not in done.stderr
    assert not sweep_dir.exists()


@pytest.fixture
def hydra_app():
    """Hydra initialised on conf/ as run.py initialises it (the pre-check composes through it)."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield


def test_jobs_sharing_config_groups_compose_exactly_as_the_launcher_composes_them(hydra_app):
    from norga.preflight import compose_jobs, sweep_jobs

    config = compose("config", overrides=["+sweep=gate_ablation", "dataset=digits", "backbone=tiny", "train.epochs=2",
                                          "hydra.mode=MULTIRUN"], return_hydra_config=True)
    jobs = sweep_jobs(config)
    assert len(jobs) == 12
    loader = GlobalHydra.instance().config_loader()
    for job, cfg in compose_jobs(config, jobs):
        full = loader.load_sweep_config(config, job)
        with read_write(full), open_dict(full):
            del full["hydra"]
        assert cfg == full, job


def test_path_valued_overrides_give_one_folder_per_job(hydra_app):
    """``-m ... backbone.checkpoint=/abs/path/file.pth`` named each job folder ``0_backbone.checkpoint=/abs/
    path/file.pth``: a tree of directories per job."""
    cfg = compose("config", overrides=["backbone.checkpoint=/abs/path/file.pth", "seed=40",
                                       "paths.data_dir=/data/sets", "hydra.job.num=0"], return_hydra_config=True)
    subdir = cfg.hydra.sweep.subdir
    row, job = subdir.split("/")
    assert (row, job) == ("digits_tiny_norga", "0_backbone.checkpoint=file.pth,seed=40")


@pytest.mark.parametrize(("dirname", "expected"), [
    ("seed=40", "seed=40"),
    ("backbone.checkpoint=/abs/path/file.pth,seed=40", "backbone.checkpoint=file.pth,seed=40"),
    ("a=rel/dir/,b=x", "a=dir,b=x"),
    ("method.prompt_layers=[0,1],x=[/a/b,c/d]", "method.prompt_layers=[0,1],x=[b,d]"),
    ("w=C:\\weights\\vit.pth", "w=vit.pth"),
])
def test_safe_dirname(dirname, expected):
    assert safe_dirname(dirname) == expected


def test_safe_dirname_keeps_long_names_unique_and_short():
    a, b = safe_dirname("x=" + "a" * 300), safe_dirname("x=" + "a" * 299 + "b")
    assert a != b and len(a.encode()) <= 200 and len(b.encode()) <= 200


def no_hub(monkeypatch):
    """A hub endpoint where nothing answers, and the offline switch unset (restored after the test)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "unset")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_hub_offline_mode_when_the_hub_cannot_be_reached(monkeypatch):
    """A Sup-21K job without cached weights spent about 23 s on the hub client's retries offline."""
    import huggingface_hub.constants as constants

    from norga.preflight import hub_offline_if_unreachable

    no_hub(monkeypatch)
    assert hub_offline_if_unreachable(timeout=2.0) is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True


def test_missing_hub_weights_fail_at_once_offline(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from norga.models.checkpoint_formats import CheckpointNotFoundError, check_checkpoint_available
    from norga.preflight import hub_offline_if_unreachable

    no_hub(monkeypatch)
    backbone = OmegaConf.load(ROOT / "conf" / "backbone" / "sup21k.yaml")
    backbone.format.cache_dir = str(tmp_path)
    start = time.perf_counter()
    hub_offline_if_unreachable()
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE"):
        check_checkpoint_available(backbone)
    assert time.perf_counter() - start < 5
