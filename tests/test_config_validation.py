"""Config validation before anything is built: values out of range, options that do not exist and keys no
schema declares (``+key=``) stop ``run.py`` in a fraction of a second, with one paragraph that names the key,
the rule and the fix, before any model, data or run directory exists. The rules are the schemas' field
metadata, checked by one generic validator (norga.config.validate)."""

import subprocess
import sys
import time
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from norga.config import ATTENTION_KERNELS, RunConfig, explain_compose_error, register, validate
from norga.errors import ConfigError
from norga.methods.schemas import METHOD_SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def compose_cfg(overrides=()):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def app(*args, cwd=ROOT):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    return done, time.perf_counter() - start


# ---- the commands of the report, through the app -----------------------------------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("optimizer.lr=-1", "optimizer.lr: -1.0 must be > 0"),           # trained by gradient ascent, exit 0
    ("train.batch_size=0", "train.batch_size: 0 must be > 0"),       # failed late, misleading message
    ("train.batch_size=-4", "train.batch_size: -4 must be > 0"),
    ("+train.epoch=3", "did you mean train.epochs"),                 # ran 5 epochs
    ("+trian.epochs=3", "did you mean train?"),                      # ran 5 epochs
])
def test_bad_value_fails_fast_without_building_anything(override, expected, tmp_path):
    run_dir = tmp_path / "run"
    done, seconds = app(override, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert expected in done.stderr, out
    assert f"(command line: {override})" in done.stderr
    assert "Traceback" not in out
    assert seconds < 5, f"{seconds:.1f}s"
    # no model, no data, no run directory: the engine never started
    assert not run_dir.exists() and "threads:" not in out and "backbone" not in out


def test_misspelt_key_is_not_answered_with_a_plus_hint(tmp_path):
    """Hydra's own answer to ``train.epoch=3`` is "To append to your config use +train.epoch=3"."""
    done, seconds = app("train.epoch=3", cwd=tmp_path)
    assert done.returncode == 1 and seconds < 5
    assert "+train.epoch" not in done.stderr and "did you mean train.epochs" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_hydra_override_error_names_the_closest_keys():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["method.tii.lrr=0.1"])
    text = explain_compose_error(info.value)
    assert "method.tii.lrr: no such key in TIIConfig; did you mean method.tii.lr?" in text


# ---- the validator ------------------------------------------------------------------------------------------
def problems_of(overrides):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides), overrides)
    return str(info.value)


@pytest.mark.parametrize(("override", "expected"), [
    ("train.precision=fp16", "'fp16' is not an option; choose one of auto, fp32, tf32, bf16"),
    ("train.attention=fast", "'fast' is not an option"),
    ("device=gpu", "'gpu' is not one of auto, cpu, mps, cuda or cuda:<index>"),
    ("scheduler=cosine", None),
    ("method.statistics=median", "'median' is not an option"),
    ("method.prefix_layout=mixed", "'mixed' is not an option"),
    ("method.tii.scheduler.name=linear", "'linear' is not an option"),
    ("method.tii.mlp_structure=[]", "needs at least 1 item"),
    ("method.tii.mlp_structure=[2,0]", "item 0 must be >= 1"),
    ("method.prompt_momentum=1.5", "1.5 must be <= 1.0"),
    ("method.contrastive_temperature=0", "0.0 must be > 0"),
    ("optimizer.lr=nan", "nan must be a finite number"),
    ("seed=-1", "-1 must be >= 0"),
    ("train.threads=0", "0 must be > 0"),
    ("train.clip_grad=null", None),
    ("dataset.num_tasks=0", "0 must be > 0"),
    ("backbone.std=[0.5,0,0.5]", "item 0.0 must be > 0"),
])
def test_values_are_checked_against_field_metadata(override, expected):
    if expected is None:
        validate(compose_cfg([override]))
        return
    text = problems_of([override])
    assert expected in text and override.split("=")[0] in text


@pytest.mark.parametrize("method", sorted(METHOD_SCHEMAS))
def test_every_method_validates_as_shipped(method):
    validate(compose_cfg([f"method={method}"]))


def test_method_schemas_are_checked_like_the_engine_schemas():
    assert "method.top_k: 0 must be > 0" in problems_of(["method=l2p", "method.top_k=0"])
    assert "did you mean method.prompt_length" in problems_of(["method=dualprompt", "+method.prompt_lenght=3"])


def test_all_problems_are_listed_in_one_paragraph():
    text = problems_of(["optimizer.lr=-1", "+train.epoch=3", "train.precision=fp16"])
    assert text.startswith("the config has 3 problems:")
    assert text.count("\n  ") == 3 and "python run.py --cfg job" in text


def test_attention_choices_are_the_kernels():
    from norga.models.attention import PREFIX_IMPLS

    assert ATTENTION_KERNELS == PREFIX_IMPLS


# Free-text strings (names, paths, import paths, URLs) have no options to check; the gate is checked by the
# methods (norga.models.gates) and its field lives in norga.methods.schemas.
FREE_TEXT = {"_target_", "name", "root", "arch", "checkpoint", "source", "data_dir", "cache_dir",
             "checkpoint_dir", "gate"}


def _schemas():
    seen, todo = [], [RunConfig, *METHOD_SCHEMAS.values()]
    while todo:
        schema = todo.pop()
        if schema in seen:
            continue
        seen.append(schema)
        hints = typing.get_type_hints(schema)
        todo += [h for h in hints.values() if is_dataclass(h)]
    return seen


def _leaf(hint):
    """``int`` for ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint


@pytest.mark.parametrize("schema", _schemas(), ids=lambda s: s.__name__)
def test_every_number_has_a_range_and_every_option_its_choices(schema):
    """Where a wrong sign, a zero or an unknown option is meaningless, the schema says so."""
    hints = typing.get_type_hints(schema)
    unchecked = []
    for f in fields(schema):
        hint = _leaf(hints[f.name])
        rules = set(f.metadata)
        if hint in (int, float) and not rules & {"min", "min_exclusive", "max"}:
            unchecked.append(f.name)
        if hint is str and f.name not in FREE_TEXT and not rules & {"choices", "pattern"}:
            unchecked.append(f.name)
    assert not unchecked, f"{schema.__name__}: no metadata on {unchecked}"
