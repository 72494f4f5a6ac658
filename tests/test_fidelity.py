"""fidelity=reference (docs/algorithm.md#fidelity): composed with every preset row it validates and sets exactly
what the docs' table lists for the row's method and backbone, and nothing else; fidelity=corrected is the default;
metrics.json records the fidelity and the report labels reference rows and keeps them apart."""

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from norga.config import register, validate
from norga.report import main as report
from tests.learning import preset_row
from tests.test_report import write_run

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "preset").glob("*.yaml"))
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


def documented_settings() -> list[tuple[set[str] | None, set[str] | None, dict]]:
    """The rows of docs/algorithm.md's "What fidelity=reference sets" table: (methods, backbones, {key: value}),
    None for "all"."""
    text = (ROOT / "docs" / "algorithm.md").read_text()
    section = text.split("### What `fidelity=reference` sets", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in section.splitlines()[2:]:
        methods, backbones, sets = (cell.strip() for cell in line.strip("|").split("|"))

        def names(cell):
            return None if cell == "all" else set(re.findall(r"`(\w+)`", cell))

        values = {}
        for item in re.findall(r"`([\w.]+)=([^`]+)`", sets):
            values[item[0]] = yaml.safe_load(item[1])
        rows.append((names(methods), names(backbones), values))
    return rows


def expected_for(method: str, backbone: str) -> dict:
    out = {}
    for methods, backbones, values in documented_settings():
        if (methods is None or method in methods) and (backbones is None or backbone in backbones):
            out.update(values)
    return out


def test_the_docs_table_names_every_method():
    rows = documented_settings()
    assert rows and rows[0] == (None, None, {"train.precision": "fp32"})
    named = set().union(*(m for m, _, _ in rows if m))
    assert named == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_reference_composes_for_every_preset_row_and_sets_what_the_docs_list(method):
    register()
    wrong = []
    diffed = set()
    rows = [preset_row(p) for p in PRESETS]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for preset, (dataset, backbone, row_method) in zip(PRESETS, rows, strict=True):
            if row_method != method:
                continue
            row = [f"dataset={dataset}", f"backbone={backbone}", f"method={method}"]
            reference = compose(config_name="config", overrides=[*row, "fidelity=reference"])
            validate(reference)
            assert reference.fidelity == "reference"
            expected = expected_for(method, backbone)
            for key, value in expected.items():
                got = OmegaConf.select(reference, key)
                got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
                if got != value:
                    wrong.append(f"{preset}: {key}={got!r}, the docs say {value!r}")
            if (method, backbone) in diffed:  # composing is slow: one corrected row per (method, backbone)
                continue
            diffed.add((method, backbone))
            corrected = compose(config_name="config", overrides=row)
            assert corrected.fidelity == "corrected"
            # nothing else changes: every other key keeps the corrected run's value
            flat_c, flat_r = _flatten(corrected), _flatten(reference)
            changed = {k for k in flat_c.keys() | flat_r.keys() if flat_c.get(k) != flat_r.get(k)} - {"fidelity"}
            undocumented = {k for k in changed if not any(k == e or k.startswith(e + ".") for e in expected)}
            if undocumented:
                wrong.append(f"{preset}: fidelity=reference changes {sorted(undocumented)}, not in the docs' table")
    assert not wrong, "\n".join(wrong)


def _flatten(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg), "")
    return out


def test_the_command_line_still_wins_over_fidelity_reference():
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=dualprompt", "fidelity=reference",
                                                       "train.precision=bf16", "method.prefix_layout=per_sample"])
    assert (cfg.train.precision, cfg.method.prefix_layout, cfg.scheduler.first_task_only) == ("bf16", "per_sample",
                                                                                             True)


def test_metrics_record_the_fidelity(reference_run):
    _, metrics = reference_run("norga")
    assert metrics["fidelity"] == "corrected"


def test_report_labels_reference_rows_and_keeps_them_apart(tmp_path, capsys):
    common = dict(dataset="cifar100", backbone="sup21k", method="dualprompt", gate=None, ca=90.0, ffm=2.0, tii=80.0)
    write_run(tmp_path / "old", seed=40, fa=86.0, **common)  # written before the switch: corrected
    write_run(tmp_path / "c", seed=42, fa=87.0, extra={"fidelity": "corrected"}, **common)
    write_run(tmp_path / "r", seed=40, fa=80.0, extra={"fidelity": "reference"},
              overrides=["seed=40", "fidelity=reference"], **common)
    assert report([str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cifar100")]
    assert len(rows) == 2
    reference = next(r for r in rows if "dualprompt (reference)" in r)
    corrected = next(r for r in rows if "| dualprompt |" in r)
    assert "80.00 ± 0.00" in reference and "| - |" in reference, "fidelity is the row's label, not an override"
    assert "86.50 ± 0.50" in corrected
    assert report([str(tmp_path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith(",fidelity") and sorted(line.rsplit(",", 1)[1] for line in lines[1:]) == [
        "corrected", "reference"]


@pytest.mark.parametrize("override", ["fidelity=exact", "dataset.class_order=numpy"])
def test_bad_choices_are_refused(override):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        with pytest.raises(Exception, match="fidelity|class_order"):
            validate(compose(config_name="config", overrides=[override]))
