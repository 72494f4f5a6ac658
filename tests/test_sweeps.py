"""Hydra sweep configs (conf/sweep), the SLURM launcher config and the W&B sweep files (sweeps/).

Each is checked against a minimal stand-in of conf/config.yaml written to tmp_path (same groups, same
kind of options), and against the real conf/config.yaml where it exists.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SWEEP_CONFS = sorted((CONF / "sweep").glob("*.yaml"))
WANDB_SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))

BACKBONES = ("sup21k", "ibot21k", "ibot", "dino", "mocov3")
# (dataset, backbone) pairs of the paper; each with NoRGa and HiDe-Prompt, seeds 40, 42, 44
PAPER_ROWS = {("cifar100", b) for b in BACKBONES} | {("imr", b) for b in BACKBONES} \
    | {(d, b) for d in ("cub", "five_datasets") for b in ("sup21k", "ibot21k")}
METHODS = ("l2p", "dualprompt", "sprompt", "coda", "hide", "norga", "simplecil", "ranpac", "inflora", "sdlora",
           "hide_lora", "aper", "ease", "mos", "tuna")
JOBS = {"paper_grid": 60, "paper_cifar100": 30, "paper_imr": 30, "paper_cub": 12, "paper_five_datasets": 12,
        "gate_ablation": 12, "seeds": 3, "methods": len(METHODS) * 3, "joint": len(METHODS),
        "paper_table": 2 * 3 * 6 * 3, "pilot_table": 6 * 7}
PILOT_DATASETS = ("cub", "imr", "imagenet_a", "objectnet", "omnibenchmark", "vtab")
AUGREG = ("augreg_in21k", "augreg_in21k_ft_in1k", "augreg2_in21k_ft_in1k")

# The minimal stand-in: the groups of the real config with the options the sweeps use.
GROUPS = {
    "dataset": {"digits": 5, "cifar100": 10, "imr": 10, "cub": 10, "five_datasets": 5, "imagenet_a": 10,
                "objectnet": 20, "omnibenchmark": 10, "vtab": 5},
    "protocol": {"hide": None, "pilot": None},
    "backbone": {name: None for name in ("tiny", *BACKBONES, *AUGREG)},
    "method": {m: "tanh" if m == "norga" else None for m in METHODS},
    "bound": {"joint": None},
    "gate": {name: None for name in ("linear", "tanh", "sigmoid", "gelu")},
    "optimizer": {"adam": None},
    "logger": {"none": None, "wandb": None},
}
# hydra.sweep.subdir / override_dirname as proposed for conf/config.yaml (see the report of this work)
MINIMAL_CONFIG = """\
defaults:
  - _self_
  - dataset: digits
  - protocol: hide
  - backbone: tiny
  - method: norga
  - optimizer: adam
  - logger: wandb
  - gate: null
seed: 42
hydra:
  sweep:
    dir: multirun
    subdir: ${dataset.name}_${backbone.name}_${method.name}/${hydra.job.num}_${hydra.job.override_dirname}
  job:
    config:
      override_dirname:
        exclude_keys: [sweep, dataset, backbone, method, logger, debug, progress, device]
"""


def _option_yaml(group: str, name: str, extra) -> str:
    if group == "dataset":
        return f"name: {name}\nnum_tasks: {extra}\n"
    if group == "method":
        return f"name: {name}\ngate: {extra or 'null'}\nprompt_length: 5\n"
    if group == "gate":
        return f"# @package method\ngate: {name}\n"
    if group in ("bound", "protocol"):
        return f"# @package _global_\n{group}: {name}\n"
    if group == "optimizer":
        return "lr: 0.03\n"
    if group == "logger":
        return "mode: offline\n" if name == "wandb" else "{}\n"
    return f"name: {name}\n"


@pytest.fixture
def minimal_conf(tmp_path: Path) -> Path:
    """conf/ with a stand-in config.yaml plus this repository's conf/sweep and conf/hydra."""
    conf = tmp_path / "conf"
    for group, options in GROUPS.items():
        (conf / group).mkdir(parents=True)
        for name, extra in options.items():
            (conf / group / f"{name}.yaml").write_text(_option_yaml(group, name, extra))
    (conf / "config.yaml").write_text(MINIMAL_CONFIG)
    shutil.copytree(CONF / "sweep", conf / "sweep")
    shutil.copytree(CONF / "hydra", conf / "hydra")
    return conf


def _compose(conf: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _jobs(params: dict[str, str], command_line: list[str] = ()) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``hydra.sweeper.params`` and command-line overrides."""
    lines = [f"{k}={v}" for k, v in params.items()] + list(command_line)
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)
    return batch


def _sweep_params(path: Path) -> dict[str, str]:
    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg.hydra.sweeper.params)


def _real_config() -> None:
    """Set up composing the real conf/config.yaml; a missing file fails the test (it is part of the repo)."""
    assert (CONF / "config.yaml").is_file(), f"{CONF / 'config.yaml'} is missing: the primary config"
    from norga.config import register

    register()  # the primary config's defaults start with the structured schema


def _missing_options(jobs: list[list[str]]) -> list[str]:
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    missing = set()
    for job in jobs:
        for override in job:
            key, value = override.split("=", 1)
            if key in groups and not (CONF / key / f"{value}.yaml").is_file():
                missing.add(f"conf/{key}/{value}.yaml")
    return sorted(missing)


# ------------------------------------------------------------------------------------------- Hydra sweeps


def test_sweep_files_exist():
    assert {p.stem for p in SWEEP_CONFS} == set(JOBS)


@pytest.mark.parametrize("path", SWEEP_CONFS, ids=lambda p: p.stem)
def test_sweep_config_parses(path: Path):
    assert path.read_text().startswith("# @package _global_\n")
    params = _sweep_params(path)
    assert all(isinstance(v, str) for v in params.values()), "sweeper params are override strings"
    assert len(_jobs(params)) == JOBS[path.stem]
    assert OmegaConf.load(path).hydra.mode == "MULTIRUN"


def test_paper_sweeps_cover_the_paper_rows_once():
    jobs = [job for name in ("paper_grid", "paper_cub", "paper_five_datasets")
            for job in _jobs(_sweep_params(CONF / "sweep" / f"{name}.yaml"))]
    rows = [tuple(dict(o.split("=", 1) for o in job)[k] for k in ("dataset", "backbone", "method", "seed"))
            for job in jobs]
    expected = {(d, b, m, s) for d, b in PAPER_ROWS for m in ("norga", "hide") for s in ("40", "42", "44")}
    assert sorted(rows) == sorted(expected)
    # paper_grid is exactly paper_cifar100 + paper_imr
    per_dataset = [job for name in ("paper_cifar100", "paper_imr")
                   for job in _jobs(_sweep_params(CONF / "sweep" / f"{name}.yaml"))]
    grid = _jobs(_sweep_params(CONF / "sweep" / "paper_grid.yaml"))
    assert sorted(map(sorted, per_dataset)) == sorted(map(sorted, grid))


def test_table_sweeps_rebuild_the_nogra_and_pilot_tables():
    """paper_table: Table 1's six methods x CIFAR-100/ImageNet-R x its three backbones x seeds 40/42/44 under
    HiDe's protocol; pilot_table: the EASE/MOS rows of the methods norga has, PILOT's protocol, seed 1993, each
    row with its preset (the split of the published table)."""
    table = _jobs(_sweep_params(CONF / "sweep" / "paper_table.yaml"))
    rows = {tuple(dict(o.split("=", 1) for o in job)[k] for k in ("protocol", "dataset", "backbone", "method", "seed"))
            for job in table}
    assert rows == {("hide", d, b, m, s) for d in ("cifar100", "imr") for b in ("sup21k", "ibot21k", "ibot")
                    for m in ("l2p", "dualprompt", "sprompt", "coda", "hide", "norga") for s in ("40", "42", "44")}
    pilot = [dict(o.split("=", 1) for o in job) for job in _jobs(_sweep_params(CONF / "sweep" / "pilot_table.yaml"))]
    assert {j["protocol"] for j in pilot} == {"pilot"} and {j["seed"] for j in pilot} == {"1993"}
    assert {j["dataset"] for j in pilot} == set(PILOT_DATASETS)
    missing = [f"{j['dataset']}_{j['backbone']}_{j['method']}" for j in pilot
               if not (CONF / "preset" / f"{j['dataset']}_{j['backbone']}_{j['method']}.yaml").is_file()]
    assert not missing, f"PILOT rows without a preset: {missing}"


def test_methods_sweep_runs_every_method_on_the_paper_seeds_and_joint_their_bounds():
    methods = _jobs(_sweep_params(CONF / "sweep" / "methods.yaml"), ["dataset=cifar100", "backbone=sup21k"])
    assert sorted(tuple(sorted(job)) for job in methods) == sorted(
        tuple(sorted([f"method={m}", f"seed={s}", "dataset=cifar100", "backbone=sup21k"]))
        for m in METHODS for s in (40, 42, 44))
    assert {p.stem for p in (CONF / "method").glob("*.yaml")} == set(METHODS), "a new method joins the sweep"
    joint = _jobs(_sweep_params(CONF / "sweep" / "joint.yaml"))
    assert sorted(dict(o.split("=") for o in job)["method"] for job in joint) == sorted(METHODS)
    _real_config()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=joint", "method=l2p"])
    assert cfg.bound == "joint" and cfg.dataset.num_tasks == 1


def test_command_line_replaces_a_swept_value():
    jobs = _jobs(_sweep_params(CONF / "sweep" / "gate_ablation.yaml"), ["dataset=cub", "backbone=ibot21k"])
    assert len(jobs) == 12
    assert all("dataset=cub" in job and "backbone=ibot21k" in job for job in jobs)
    assert {o for job in jobs for o in job if o.startswith("gate=")} == {f"gate={g}" for g in
                                                                        ("linear", "tanh", "sigmoid", "gelu")}


def _distinct_jobs() -> dict[str, list[list[str]]]:
    """Each sweep's jobs for one seed (seed is a plain value), without rows an earlier sweep already has."""
    seen, out = set(), {}
    for path in SWEEP_CONFS:
        command_line = ["seed=40", "dataset=cifar100"] if path.stem == "seeds" else ["seed=40"]
        jobs = [job for job in _jobs(_sweep_params(path), command_line) if tuple(sorted(job)) not in seen]
        seen |= {tuple(sorted(job)) for job in jobs}
        out[path.stem] = jobs
    return out


def _compose_all(conf: Path) -> None:
    """``+sweep=<name>`` and then every distinct job compose; the composed config holds what was asked."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for name, jobs in _distinct_jobs().items():
            cfg = compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
            params = OmegaConf.to_container(cfg.hydra.sweeper.params)
            assert params == _sweep_params(CONF / "sweep" / f"{name}.yaml")
            for job in jobs:
                chosen = dict(o.split("=", 1) for o in job)
                cfg = compose("config", overrides=[f"+sweep={name}", *job])
                assert (cfg.dataset.name, cfg.seed) == (chosen.get("dataset", "digits"), 40)
                assert cfg.backbone.name == chosen.get("backbone", "tiny")
                assert cfg.method.name == chosen.get("method", "norga")
                if "gate" in chosen:  # the gate group is applied after the presets, so it wins
                    assert cfg.method.gate == chosen["gate"]


def test_sweep_jobs_compose_against_minimal_config(minimal_conf: Path):
    _compose_all(minimal_conf)


def test_sweep_jobs_compose_against_real_config():
    _real_config()
    missing = _missing_options([job for jobs in _distinct_jobs().values() for job in jobs])
    assert not missing, "the sweeps name config options that do not exist: " + ", ".join(missing)
    _compose_all(CONF)


def test_every_paper_row_has_a_preset():
    missing = [f"{d}_{b}_{m}" for d, b in sorted(PAPER_ROWS) for m in ("norga", "hide", "l2p", "dualprompt", "sprompt")
               if not (CONF / "preset" / f"{d}_{b}_{m}.yaml").is_file()]
    assert not missing, f"paper rows without conf/preset/<row>.yaml: {missing}"


def test_multirun_end_to_end_then_report(minimal_conf: Path, tmp_path: Path):
    """`python app.py +sweep=seeds` (no -m: the sweep sets hydra.mode) runs 3 jobs; the report groups them."""
    app = tmp_path / "app.py"
    app.write_text(
        "import json\nfrom pathlib import Path\nimport hydra\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        "@hydra.main(config_path='conf', config_name='config', version_base='1.3')\n"
        "def main(cfg):\n"
        "    n = cfg.dataset.num_tasks\n"
        "    acc = [[80.0 + cfg.seed / 4] * (i + 1) for i in range(n)]\n"
        "    out = {'finished': True, 'dataset': cfg.dataset.name, 'backbone': cfg.backbone.name,\n"
        "           'method': cfg.method.name, 'gate': cfg.method.gate, 'seed': cfg.seed, 'num_tasks': n,\n"
        "           'acc_matrix': acc, 'tii_acc': 99.0}\n"
        "    Path(HydraConfig.get().runtime.output_dir, 'metrics.json').write_text(json.dumps(out))\n"
        "main()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(app), "+sweep=seeds", "dataset=cifar100", "logger=none"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job_dirs = sorted(p.parent.relative_to(tmp_path / "multirun").as_posix()
                      for p in (tmp_path / "multirun").rglob("metrics.json"))
    # the row is the folder, the seed the job: no "+sweep=seeds" or logger in the name
    assert job_dirs == ["cifar100_tiny_norga/0_seed=40", "cifar100_tiny_norga/1_seed=42",
                        "cifar100_tiny_norga/2_seed=44"]
    report = subprocess.run([sys.executable, "-m", "norga.report", "multirun", "--format", "csv"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    # FA = 80 + seed / 4 = 90, 90.5, 91 -> 90.50 ± 0.41; one row (seed, sweep and logger do not split it)
    assert report.stdout.splitlines()[1:] == [
        "cifar100,tiny,norga,tanh,10,,3,40 42 44,90.50,0.41,90.50,0.41,0.00,0.00,99.00,0.00"]


# --------------------------------------------------------------------------------------------- launchers


def _check_slurm_defaults(cfg, partition) -> None:
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.timeout_min, launcher.gpus_per_node, launcher.tasks_per_node, launcher.cpus_per_task,
            launcher.mem_gb) == (1440, 1, 1, 8, 64)
    assert launcher.partition == partition


def test_slurm_launcher_composes(minimal_conf: Path, monkeypatch):
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    plain = _compose(minimal_conf, ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                    "hydra.launcher.gpus_per_node=2", "hydra.launcher.timeout_min=600",
                                    "hydra.launcher.mem_gb=32", "hydra.launcher.cpus_per_task=4"])
    assert (plain.hydra.launcher.partition, plain.hydra.launcher.gpus_per_node) == ("gpu", 2)
    _check_slurm_defaults(_compose(minimal_conf, ["hydra/launcher=slurm"]), None)
    monkeypatch.setenv("SLURM_PARTITION", "a100")
    _check_slurm_defaults(_compose(minimal_conf, ["hydra/launcher=slurm", "+sweep=paper_grid"]), "a100")
    cfg = _compose(minimal_conf, ["hydra/launcher=slurm", "hydra.launcher.partition=h100",
                                  "hydra.launcher.timeout_min=2880"])
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.timeout_min) == ("h100", 2880)
    joblib = _compose(minimal_conf, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert joblib.hydra.launcher.n_jobs == 2


def test_slurm_launcher_composes_with_real_config(monkeypatch):
    _real_config()
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
        _check_slurm_defaults(compose("config", overrides=["hydra/launcher=slurm", "+sweep=paper_grid"],
                                      return_hydra_config=True), None)


# -------------------------------------------------------------------------------------------- W&B sweeps

COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]


def _samples(spec: dict) -> list:
    """A few values W&B could pick for one parameter (grid values, or a distribution's ends and middle)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    low, high = spec["min"], spec["max"]
    return [low, high, (low * high) ** 0.5, 1.2345e-05]  # the last: how W&B prints a small float


def _agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line ``wandb agent`` builds, as in wandb_agent.Agent._command_run."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    out = []
    for chunk in sweep["command"]:
        out += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return out


def _expanded(sweep: dict) -> list[list[str]]:
    params = sweep["parameters"]
    names = list(params)
    return [_agent_command(sweep, dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*(_samples(params[n]) for n in names))]


@pytest.mark.parametrize("path", WANDB_SWEEPS, ids=lambda p: p.stem)
def test_wandb_sweep_definition(path: Path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "run.py"
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"] == {"name": "final_avg_acc", "goal": "maximize"}
    assert sweep["command"] == COMMAND
    for name, spec in sweep["parameters"].items():
        kinds = {"value", "values", "distribution"} & set(spec)
        assert len(kinds) == 1, name
        if sweep["method"] == "grid":
            assert "distribution" not in spec, f"{name}: grid search needs discrete values"
        if "distribution" in spec:
            assert spec["distribution"] in ("log_uniform_values", "uniform", "int_uniform")
            assert isinstance(spec["min"], int | float) and isinstance(spec["max"], int | float)
    json.dumps(sweep)  # W&B sends the definition as JSON: plain types only


@pytest.mark.parametrize("path", WANDB_SWEEPS, ids=lambda p: p.stem)
def test_wandb_command_is_hydra_overrides(path: Path, minimal_conf: Path):
    sweep = yaml.safe_load(path.read_text())
    commands = _expanded(sweep)
    assert commands and all(c[:3] == ["/usr/bin/env", "python", "run.py"] for c in commands)
    parser = OverridesParser.create()
    for command in commands:
        overrides = parser.parse_overrides(command[3:])
        assert not any(o.is_sweep_override() for o in overrides)
        assert {o.key_or_group for o in overrides} == set(sweep["parameters"])
    if sweep["method"] == "grid":
        assert len(commands) == len({tuple(c) for c in commands})
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(minimal_conf), version_base="1.3"):
        for command in commands[:: max(1, len(commands) // 4)]:  # a spread of them compose
            assert compose("config", overrides=command[3:]).logger.mode == "online"


def test_wandb_command_composes_with_real_config():
    _real_config()
    commands = [_expanded(yaml.safe_load(p.read_text()))[0][3:] for p in WANDB_SWEEPS]
    missing = _missing_options(commands)
    assert not missing, "the W&B sweeps name config options that do not exist: " + ", ".join(missing)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in commands:
            cfg = compose("config", overrides=overrides)
            assert cfg.logger.mode == "online"
