"""The documentation ships with the code: nothing cites a document outside the repository, and every
``docs/<page>.md#<anchor>`` that code, configs or docs cite names a heading that exists."""

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


OUTSIDE_METHOD = '''
import torch
from torch import nn

from norga.engine.stages import Stage, evaluation
from norga.methods.base import Learner


class Table(nn.Module):
    def __init__(self, rows, dim):
        super().__init__()
        self.register_buffer("means", torch.zeros(rows, dim))


class NearestMean(Learner):
    """Nearest class mean of the frozen features: one learner stage, no training."""

    name = "nearest_mean"
    features_need_images = False

    def __init__(self, cfg, backbone, benchmark, device):
        super().__init__(cfg, backbone, benchmark, device)
        self.table = Table(benchmark.num_classes, backbone.embed_dim).to(device)

    def stages(self, task):
        return [Stage("class_means"), evaluation()]

    def modules(self):
        return {"table": self.table}

    def class_means(self, ctx):
        ctx.seed_epoch()
        feats, labels = self.extract_all(self.backbone_features, self.statistics_loader(ctx.task), "means")
        for c in labels.unique().tolist():
            self.table.means[c] = feats[labels == c].mean(0)

    def features(self, x, selection, query):
        return query

    def logits(self, features, upto_task):
        distance = torch.cdist(features, self.table.means)
        return (-distance).masked_fill(~self.benchmark.seen_mask(upto_task).to(distance.device), float("-inf"))
'''


def test_a_method_outside_the_package_runs_under_the_contract(tmp_path):
    """docs/extending.md: a method is one code file plus its YAML; here both live outside the repository."""
    import json
    import os
    import sys

    (tmp_path / "nearest_mean.py").write_text(OUTSIDE_METHOD)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "nearest_mean.yaml").write_text(
        "_target_: nearest_mean.NearestMean\nname: nearest_mean\ngate: null\nbatchwise_prompt: false\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "run.py", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                           "method=nearest_mean", "dataset.num_tasks=2", "dataset.source.train_fraction=0.25",
                           "eval.max_samples_per_task=60", "logger=none", "progress=false",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["method"] == "nearest_mean" and metrics["final_avg_acc"] > 50
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.pt", "task_0.pt",
                                                                                    "task_1.pt"]
