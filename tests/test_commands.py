"""Commands a user runs must start: every script in ``benchmarks/`` and ``scripts/`` runs here on a tiny
configuration (a command that no longer starts fails CI), and so does every command of the README that can run
offline (the others compose their config, which catches a renamed key or option)."""

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.learning import METHOD_LEARN

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
# appended to the README's offline commands so they take seconds
TINY = ["logger=none", "progress=false", "train.max_epochs=1", "train.max_batches=2", "train.max_stats_per_class=4",
        "eval.max_samples_per_task=8", "train.batch_size=4"]


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_script_is_covered_here():
    scripts = {p.relative_to(ROOT).as_posix() for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")}
    assert scripts == {"benchmarks/step.py", "benchmarks/eval_passes.py", "benchmarks/vs_reference.py",
                       "scripts/pretrain_embedded_vit.py", "scripts/mutants.py"}, \
        "a new script needs a test that runs it"


def test_vs_reference_explains_itself_and_what_to_fetch(capsys):
    """It needs the authors' checkout, which norga does not ship: --help runs, and without the directory it says
    which repositories to clone (the comparison itself runs where a user has them: benchmarks/README.md)."""
    done = subprocess.run([sys.executable, "benchmarks/vs_reference.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--reference-dir" in done.stdout and "MoE_PromptCL" in done.stdout
    bench = load_script(ROOT / "benchmarks" / "vs_reference.py")
    assert bench.main([]) == 2
    out = capsys.readouterr().out
    assert "git clone https://github.com/Minhchuyentoancbn/MoE_PromptCL" in out
    assert "git clone https://github.com/GT-RIPL/CODA-Prompt" in out
    with pytest.raises(SystemExit, match="neither a MoE_PromptCL nor a CODA-Prompt checkout"):
        bench.main(["--reference-dir", str(ROOT / "docs")])


@pytest.mark.parametrize("method", METHODS)
def test_step_benchmark_runs_for_every_method(method, capsys):
    step = load_script(ROOT / "benchmarks" / "step.py")
    speedup = step.main([f"method={method}", *METHOD_LEARN.get(method, []), "logger=none", "train.batch_size=2",
                         "dataset.num_tasks=2", "--iters", "1", "--warmup", "1", "--classes-per-task", "2"])
    out = capsys.readouterr().out
    assert speedup > 0 and f"method {method}" in out and out.strip().splitlines()[-1].startswith("speedup ")


def test_eval_passes_benchmark_runs(capsys):
    bench = load_script(ROOT / "benchmarks" / "eval_passes.py")
    result = bench.main(["dataset.num_tasks=2", "train.max_batches=2", "eval.max_samples_per_task=8"])
    assert result["vit_passes"] <= result["bound"] + 1e-3 < result["reference"]
    assert "reference / this run" in capsys.readouterr().out


def test_pretraining_script_runs_on_a_tiny_budget(tmp_path, capsys):
    script = load_script(ROOT / "scripts" / "pretrain_embedded_vit.py")
    script.main(["--steps", "2", "--num-classes", "4", "--batch-size", "8", "--probe-per-class", "10",
                 "--out", str(tmp_path / "vit.safetensors"), "--threads", "1"])
    assert (tmp_path / "vit.safetensors").stat().st_size > 0
    assert "digits linear probe" in capsys.readouterr().out


def test_mutation_check_catches_a_listed_mutant():
    done = subprocess.run([sys.executable, "scripts/mutants.py", "--only", "forgetting-without-last-row"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CAUGHT" in done.stdout and "1 of 1 mutants caught" in done.stdout
    listed = subprocess.run([sys.executable, "scripts/mutants.py", "--list"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    assert "resume-drops-optimizer-state" in listed and "eval-uses-true-task" in listed


# ---- README commands -----------------------------------------------------------------------------------------
READMES = ("README.md", "benchmarks/README.md")
NOT_RUN = {"make test"}  # the suite itself


def readme_commands() -> list[tuple[str, str]]:
    """``(readme, command)`` for every line of every ``bash`` block, comments stripped."""
    out = []
    for readme in READMES:
        for block in re.findall(r"```bash\n(.*?)```", (ROOT / readme).read_text(), re.S):
            for line in block.splitlines():
                command = line.split(" #")[0].strip()
                if command and command not in NOT_RUN:
                    out.append((readme, command))
    return out


def overrides_of(tokens: list[str]) -> tuple[list[str], bool]:
    """A command's Hydra overrides (without Hydra's own, flags and placeholders) and whether it is a sweep."""
    sweep = "-m" in tokens or any(t.startswith("+sweep=") for t in tokens)
    keep = []
    skip_next = False
    for t in tokens:
        if skip_next:
            skip_next = False
            continue
        if t == "--cfg":
            skip_next = True
        elif not (t.startswith(("-", "hydra")) or "<" in t or t == "..."):
            keep.append(t)
    return keep, sweep


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    lines = [o for o in overrides if not o.startswith("+sweep=")]
    for o in overrides:
        if o.startswith("+sweep="):
            params = OmegaConf.load(ROOT / "conf" / "sweep" / f"{o.split('=', 1)[1]}.yaml").hydra.sweeper.params
            given = {line.split("=", 1)[0] for line in lines}
            lines = [f"{k}={v}" for k, v in params.items() if k not in given] + lines
    parsed = OverridesParser.create().parse_overrides(lines)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    sweep_choice = [o for o in overrides if o.startswith("+sweep=")]
    return [sweep_choice + job for job in batch]


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """Jobs of a sweep in which every swept value appears at least once (every job of every sweep file is
    composed by tests/test_sweeps.py; a README command adds overrides to them, which these jobs each meet)."""
    chosen, seen = [], set()
    for job in jobs:
        if not set(job) <= seen:
            chosen.append(job)
            seen |= set(job)
    return chosen


def test_covering_jobs_keep_every_swept_value_once():
    jobs = [["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=2", "b=y"], ["a=3", "b=x"]]
    assert covering_jobs(jobs) == [["a=1", "b=x"], ["a=1", "b=y"], ["a=2", "b=x"], ["a=3", "b=x"]]


@pytest.mark.parametrize(("readme", "command"), readme_commands())
def test_readme_command_composes_and_validates(readme, command):
    """Every run and sweep command of the READMEs names keys and options that exist and values the schemas
    accept (each job of a sweep); commands that need the real data or weights stop no earlier than that."""
    from hydra import compose, initialize_config_dir

    from norga.config import register, validate

    tokens = shlex.split(command)
    if tokens[:2] == ["make", "run"]:
        tokens = ["python", "run.py", *tokens[2:]]
    if tokens[:3] == ["python", "-m", "norga.report"]:
        from norga.report import main as report

        # no runs under a fresh path: status 2 with its message, once the options parsed
        assert report([str(ROOT / "outputs-does-not-exist"), *tokens[4:]]) == 2
        return
    script = tokens[1] if tokens[0] == "python" else None
    assert script in ("run.py", "benchmarks/step.py", "benchmarks/eval_passes.py", "benchmarks/vs_reference.py"), \
        f"no test runs: {command}"
    if script == "benchmarks/vs_reference.py":  # needs the authors' checkout: its options must parse
        args = load_script(ROOT / script).build_parser().parse_args(tokens[2:])
        assert args.reference_dir is not None and not args.overrides, command
        return
    overrides, sweep = overrides_of(tokens[2:])
    if script == "benchmarks/eval_passes.py":
        overrides = load_script(ROOT / script).SHRUNK + overrides
    register()
    jobs = covering_jobs(sweep_jobs(overrides)) if sweep else [overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for job in jobs:
            validate(compose(config_name="config", overrides=job), job)


@pytest.mark.parametrize("command", ["python run.py", "python run.py method=l2p",
                                     "python run.py +bound=joint method=norga"])
def test_readme_commands_on_the_embedded_default_run(command, tmp_path):
    """The README's commands that need no download run end to end (shrunk by train.max_epochs and friends)."""
    assert any(c in (command, command.replace("python run.py", "make run")) for _, c in readme_commands())
    done = subprocess.run([sys.executable, "run.py", *shlex.split(command)[2:], *TINY,
                           f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["finished"]
