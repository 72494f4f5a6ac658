"""The documentation ships with the code: nothing cites a document outside the repository, and every
``docs/<page>.md#<anchor>`` that code, configs or docs cite names a heading that exists."""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"ALGORITHM\.md|BASELINES\.md|PAPER_RESULTS\.md|\.\./shared|shared/(ALGORITHM|BASELINES)")
CITATION = re.compile(r"docs/([\w-]+\.md)#([\w-]+)")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".txt")) or n == "Makefile"]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            out.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_no_file_cites_a_document_outside_the_repository():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in tracked_text_files() if p.name != "test_docs.py"
                 for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, offenders


@pytest.mark.parametrize("page", ["algorithm.md", "extending.md", "architecture.md", "paper_results.md"])
def test_docs_pages_exist(page):
    assert (ROOT / "docs" / page).is_file()


def test_every_cited_anchor_exists():
    pages: dict[str, set[str]] = {}
    broken = []
    for path in tracked_text_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for page, anchor in CITATION.findall(line):
                if page not in pages:
                    target = ROOT / "docs" / page
                    pages[page] = anchors(target) if target.exists() else set()
                if anchor not in pages[page]:
                    broken.append(f"{path.relative_to(ROOT)}:{i}: docs/{page}#{anchor}")
    assert not broken, "\n".join(broken)


def doc_blocks(page: str, heading: str) -> dict[str, str]:
    """The fenced code blocks of the section of ``docs/<page>`` under ``heading``, by language."""
    text = (ROOT / "docs" / page).read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n#", start + len(heading) + 2)
    blocks = re.findall(r"```(\w+)\n(.*?)```", text[start:end if end >= 0 else None], re.S)
    languages = [lang for lang, _ in blocks]
    assert len(set(languages)) == len(languages), f"one block per language under {heading!r}: {languages}"
    return dict(blocks)


@pytest.fixture(scope="module")
def minimal_method(tmp_path_factory):
    """docs/extending.md's minimal method, written as the page says: ``my_methods/<module>.py`` and
    ``my_methods/conf/method/<name>.yaml``, in a folder outside the repository; returns the folder, the method's
    name and the page's command."""
    import yaml

    blocks = doc_blocks("extending.md", "### A complete minimal method")
    config = yaml.safe_load(blocks["yaml"])
    module = config["_target_"].rsplit(".", 1)[0]
    folder = tmp_path_factory.mktemp("outside") / "my_methods"
    (folder / "conf" / "method").mkdir(parents=True)
    (folder / f"{module}.py").write_text(blocks["python"])
    (folder / "conf" / "method" / f"{config['name']}.yaml").write_text(blocks["yaml"])
    return folder, config["name"], blocks["bash"].strip()


def run_outside(folder: Path, args: list[str], log: Path, crash_at: str | None = None) -> int:
    """``run.py`` from ``folder`` (outside the repository) with the method's folder on PYTHONPATH and in
    Hydra's search path, as the page's command; stdout and stderr go to the file ``log``."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NORGA_CRASH_AT"}
    env["PYTHONPATH"] = str(folder)
    if crash_at:
        env["NORGA_CRASH_AT"] = crash_at
    with log.open("w") as out:
        return subprocess.run([sys.executable, str(ROOT / "run.py"), f"hydra.searchpath=[file://{folder / 'conf'}]",
                               *args], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600).returncode


@pytest.fixture(scope="module")
def smoke_run(minimal_method):
    """The page's command, run as written (``<norga>`` replaced) with three epochs asked for (``debug=smoke`` caps
    them at one), its output redirected to a file."""
    import os
    import sys

    folder, _, command = minimal_method
    assert "<norga>/run.py" in command and "debug=smoke" in command, command
    line = command.replace("<norga>", str(ROOT)).replace(" python ", f" {sys.executable} ", 1)
    log = folder.parent / "smoke.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NORGA_CRASH_AT", "PYTHONPATH")}
    with log.open("w") as out:
        done = subprocess.run(["bash", "-c", line + " train.epochs=3 hydra.run.dir=run_smoke"], cwd=folder, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, log.read_text()[-3000:]
    return folder / "run_smoke", log.read_text()


def test_the_minimal_method_runs_exactly_the_capped_epochs_under_debug_smoke(smoke_run):
    from norga.engine.checkpoint import load_checkpoint

    run_dir, _ = smoke_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] and metrics["config"]["train"]["epochs"] == 3
    tasks = metrics["num_tasks"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["run"]["epoch_counter"] == tasks, \
        "train.max_epochs=1: one epoch per task"
    epochs = re.findall(r"task (\d) probe epoch (\d)/(\d)", (run_dir / "run.log").read_text())
    assert epochs == [(str(t), "1", "1") for t in range(tasks)]


def test_output_redirected_to_a_file_has_no_progress_bars_and_one_line_per_epoch(smoke_run):
    """``progress=auto`` (the default): bars only on a terminal; to a file, a line per epoch, no carriage return."""
    _, output = smoke_run
    assert "\r" not in output
    lines = [line for line in output.splitlines() if " probe epoch " in line]
    assert len(lines) == 5, output[-3000:]
    assert all(re.search(r"epoch 1/1: loss \d+\.\d{4} \| lr \S+ \| \d+\.\ds$", line) for line in lines), lines


def test_the_minimal_method_of_extending_md_passes_the_contract(minimal_method):
    """Runs and learns on the learning fixture; SIGKILLed mid-training in task 1 and resumed, it ends exactly as
    the uninterrupted run (tests/test_contract.py for the methods in the repository)."""
    from tests.learning import RESUME_ATOL, assert_learns, assert_same_learned_state, fixture_overrides
    from tests.test_contract import COMPARED

    folder, name, _ = minimal_method
    args = fixture_overrides([f"method={name}"])
    assert run_outside(folder, [*args, "hydra.run.dir=reference"], folder / "reference.log") == 0, \
        (folder / "reference.log").read_text()[-3000:]
    reference = json.loads((folder / "reference" / "metrics.json").read_text())
    assert reference["finished"] and reference["method"] == name
    assert_learns(reference)

    killed = run_outside(folder, [*args, "hydra.run.dir=killed"], folder / "killed.log", "task1/*/epoch1/step1")
    assert killed == -9, (folder / "killed.log").read_text()[-3000:]
    assert run_outside(folder, [*args, "hydra.run.dir=killed", "resume=true"], folder / "resumed.log") == 0, \
        (folder / "resumed.log").read_text()[-3000:]
    resumed = json.loads((folder / "killed" / "metrics.json").read_text())
    assert resumed["finished"]
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    assert_same_learned_state(folder / "killed", folder / "reference", tasks=2, atol=RESUME_ATOL)
