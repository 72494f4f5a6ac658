"""Every bound a schema declares is checked before anything is built (upper bounds included, exclusive or
not), no schema can declare a rule the validator does not know, and the joint bound refuses any task count
but one (docs/algorithm.md#joint-training-bound)."""

import typing
from dataclasses import dataclass, field, fields, is_dataclass

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from norga.config import RULE_KEYS, RunConfig, config_problems, register, validate
from norga.errors import ConfigError
from norga.methods.schemas import METHOD_SCHEMAS
from tests.learning import CONF


def compose_cfg(overrides=()):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def problems_of(overrides):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides), overrides)
    return str(info.value)


# one value just outside each kind of bound, and the same key just inside it
@pytest.mark.parametrize(("overrides", "outside", "inside", "expected"), [
    (["method=ranpac"], "method.ridge_fit_fraction=1.0", "method.ridge_fit_fraction=0.999", "1.0 must be < 1.0"),
    (["method=ranpac"], "method.ridge_fit_fraction=0.0", "method.ridge_fit_fraction=0.001", "0.0 must be > 0.0"),
    (["method=ranpac", "method.first_session_adaptation=true"], "method.adaptation.dropout=1.0",
     "method.adaptation.dropout=0.999", "1.0 must be < 1.0"),
    (["method=ranpac"], "method.adaptation.dropout=-0.1", "method.adaptation.dropout=0.0", "-0.1 must be >= 0.0"),
    (["method=norga"], "method.prompt_momentum=1.01", "method.prompt_momentum=1.0", "1.01 must be <= 1.0"),
])
def test_each_kind_of_bound_is_enforced(overrides, outside, inside, expected):
    text = problems_of([*overrides, outside])
    key = outside.split("=")[0]
    assert f"{key}: {expected}" in text and f"(command line: {outside})" in text
    validate(compose_cfg([*overrides, inside]))


def _schemas():
    seen, todo = [], [RunConfig, *METHOD_SCHEMAS.values()]
    while todo:
        schema = todo.pop()
        if schema not in seen:
            seen.append(schema)
            todo += [h for h in typing.get_type_hints(schema).values() if is_dataclass(h)]
    return seen


def test_every_rule_a_schema_declares_is_one_the_validator_enforces():
    declared = {key for schema in _schemas() for f in fields(schema) for key in f.metadata}
    assert declared <= set(RULE_KEYS), sorted(declared - set(RULE_KEYS))
    # the bounds this file shows enforced above are every bound any schema declares
    assert {k for k in declared if k.startswith(("min", "max")) and k != "min_items"} == {
        "min", "min_exclusive", "max", "max_exclusive"}


def test_an_unknown_rule_stops_the_validator_instead_of_being_ignored():
    @dataclass
    class Typo:
        ratio: float = field(default=0.5, metadata={"max_exlusive": 1.0})

    with pytest.raises(TypeError, match="max_exlusive"):
        list(config_problems(OmegaConf.structured(Typo)))


def test_joint_bound_refuses_any_task_count_but_one():
    text = problems_of(["+bound=joint", "dataset.num_tasks=5"])
    assert "dataset.num_tasks: 5 tasks with +bound=joint" in text
    assert "(command line: dataset.num_tasks=5)" in text
    validate(compose_cfg(["+bound=joint"]))
    validate(compose_cfg(["+bound=joint", "dataset.num_tasks=1"]))
    validate(compose_cfg(["dataset.num_tasks=5"]))  # a continual run may have any count
