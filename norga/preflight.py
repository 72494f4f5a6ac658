"""Checks before a run or a sweep starts (a Hydra callback, ``hydra.callbacks.preflight`` in
``conf/config.yaml``), so that a command that cannot work launches nothing, builds nothing and writes nothing.

* A run: its config is validated (:func:`norga.config.validate`: ranges, options, keys no schema declares,
  the method's rules between keys), its output folder must be writable, the data of norga's loaders must be
  there, and a start without ``resume=true`` in a directory that holds a run is refused (:mod:`norga.engine.record`).
* A sweep: every job's config is composed as the launcher will compose it and validated, and the datasets
  and backbone checkpoints of all jobs are looked for; one report lists everything that is wrong or missing,
  before the first job folder exists.
* Both: a backbone that comes from the Hugging Face hub and is not cached makes the hub's offline mode the
  default when the hub cannot be reached, so no job waits on download retries.

Errors are printed as one report and end the process (``SystemExit``): Hydra turns an exception raised in a
callback into a warning and goes on.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import InterpolationResolutionError

from norga.config import config_problems, explain_compose_error, problem_lines, validate
from norga.engine.record import recorded_config, refuse_changed_config, refuse_new_run
from norga.engine.threads import SWEEP_JOBS_ENV
from norga.errors import NorgaError, print_error, show_traceback
from norga.licences import check_terms
from norga.output_dirs import check_writable
from norga.protocol_defaults import with_protocol_defaults

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_HUB_FORMAT = "norga.models.checkpoint_formats.TimmPretrained"


class Preflight(Callback):
    """The Hydra callback: :func:`check_run` before a run, :func:`check_sweep` before a sweep."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _or_exit(lambda: check_run(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _or_exit(lambda: check_sweep(config))


def _or_exit(check: Callable[[], None]) -> None:
    try:
        check()
    except (NorgaError, InterpolationResolutionError) as err:
        if show_traceback():
            traceback.print_exc()
        text = str(err) if isinstance(err, NorgaError) else (
            f"the config does not resolve: {str(err).splitlines()[0]}. An ${{...}} value on the command line or "
            "in a config file names a key or resolver that does not exist; python run.py --cfg job shows the "
            "composed config. Nothing was built or written.")
        print_error(text)
        raise SystemExit(1) from None


def check_run(config: DictConfig) -> None:
    """Validate one run's composed config (``hydra`` node included), and refuse what the engine would refuse
    in the run directory (:mod:`norga.engine.record`), where that needs no torch: a start without
    ``resume=true`` in a directory that holds a run, a resume whose config differs from the one in the run's
    ``metrics.json``. The engine checks again, against ``last.pt``."""
    validate(config, _task_overrides(config))
    source = OmegaConf.select(config, "dataset.source")  # a licence that forbids the run (ObjectNet's)
    check_terms(OmegaConf.to_container(source, resolve=True) if isinstance(source, DictConfig) else None)
    run_dir = OmegaConf.select(config, "hydra.run.dir")
    if run_dir:
        run_dir = Path(os.path.abspath(str(run_dir)))
        check_writable(run_dir, "hydra.run.dir")
        if config.get("resume"):
            _refuse_changed_config(run_dir, config)
        else:
            refuse_new_run(run_dir)
    source = _resolved(config.dataset.source)
    if isinstance(source, dict) and str(source.get("_target_", "")).startswith("norga.data."):
        check_data(source)  # norga's loaders are looked for without reading; another loader reads at build
    if needs_hub(config.backbone):
        hub_offline_if_unreachable()


def _refuse_changed_config(run_dir: Path, config: DictConfig) -> None:
    recorded = with_protocol_defaults(recorded_config(run_dir))  # recorded before protocols: protocol=hide
    if recorded is None:
        return
    new = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
           for key, value in config.items() if key != "hydra"}
    if new.get("train", {}).get("precision") == "auto":  # the run recorded what auto chose on its device
        new["train"]["precision"] = recorded.get("train", {}).get("precision")
    refuse_changed_config(run_dir, recorded, new)


# ---- sweeps ---------------------------------------------------------------------------------------------------
class SweepCheckError(NorgaError):
    """Jobs of a sweep cannot run: configs that fail validation, data or checkpoints that are missing."""


def check_sweep(config: DictConfig) -> None:
    """Compose and validate every job of the sweep, look for every job's dataset and backbone checkpoint, and
    raise :class:`SweepCheckError` listing all that is wrong; nothing is launched or written before."""
    start = time.perf_counter()
    sweep_dir = OmegaConf.select(config, "hydra.sweep.dir")
    if sweep_dir:
        check_writable(sweep_dir, "hydra.sweep.dir")
    jobs = sweep_jobs(config)
    # the jobs' share of the cores counts the jobs that run at once; the launcher's processes inherit this
    os.environ[SWEEP_JOBS_ENV] = str(len(jobs))
    invalid: dict[str, list[list[str]]] = {}  # the same problems in many jobs are listed once
    configs = []
    for job, cfg in compose_jobs(config, jobs):
        if isinstance(cfg, Exception):
            text = explain_compose_error(cfg) or str(cfg)
            invalid.setdefault(text.split("\nFix it")[0], []).append(job)
            continue
        configs.append((job, cfg))
        problems = list(config_problems(cfg))
        if problems:
            invalid.setdefault(problem_lines(problems, job), []).append(job)
    sections = [f"config of {_describe(group, jobs)}:\n{text}" for text, group in invalid.items()]
    sections += _missing_data(configs, jobs)
    if any(needs_hub(cfg.backbone) for _, cfg in configs):
        hub_offline_if_unreachable()
    sections += _missing_checkpoints(configs, jobs)
    if sections:
        body = "\n\n".join(sections)
        raise SweepCheckError(
            f"the sweep cannot start: {len(jobs)} jobs checked, and what they need is wrong or missing (no job "
            f"was launched, no folder created):\n\n{body}\n\nFix these and run the same command again, or sweep "
            "only the rows that are ready (a command-line value replaces a swept one: +sweep=paper_grid "
            "dataset=cifar100 backbone=dino).")
    log.info("preflight: %d jobs checked (configs, data, checkpoints) in %.1fs", len(jobs),
             time.perf_counter() - start)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of the sweep's jobs, as Hydra's basic sweeper expands them (other sweepers choose
    their jobs as they go: only the command line's job is known)."""
    task = [str(o) for o in _task_overrides(config)]
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return [task]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + task
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    return [list(job) for batch in batches for job in batch]


def _task_overrides(config: DictConfig) -> list[str]:
    return list(OmegaConf.select(config, "hydra.overrides.task") or [])


def compose_jobs(config: DictConfig, jobs: list[list[str]]) -> Iterator[tuple[list[str], DictConfig | Exception]]:
    """Each job's config as the launcher composes it (``load_sweep_config``), or the exception composing it
    raised. Composing is the slow part (0.1-0.5 s a job): jobs that choose the same config groups share one
    composition, and their other overrides are applied to a copy by Hydra's own code for it."""
    loader = GlobalHydra.instance().config_loader()
    parser = OverridesParser.create(config_loader=loader)
    split: list[tuple[tuple[str, ...], list[Any]] | Exception] = []
    for job in jobs:
        try:
            overrides = parser.parse_overrides(job)
        except Exception as err:  # noqa: BLE001 - reported with the job
            split.append(err)
            continue
        groups = tuple(o.input_line for o in overrides if _chooses_group(loader, o))
        split.append((groups, [o for o in overrides if o.input_line not in groups]))
    composed: dict[tuple[str, ...], DictConfig | Exception] = {}
    for parts in split:
        if not isinstance(parts, Exception) and parts[0] not in composed:
            try:
                composed[parts[0]] = _task_config(loader.load_sweep_config(config, list(parts[0])))
            except Exception as err:  # noqa: BLE001 - reported with the jobs
                composed[parts[0]] = err
    for job, parts in zip(jobs, split):
        if isinstance(parts, Exception):
            yield job, parts
            continue
        base = composed[parts[0]]
        if isinstance(base, Exception):
            yield job, base
            continue
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(parts[1], cfg)
        except Exception as err:  # noqa: BLE001 - reported with the job
            yield job, err
            continue
        yield job, cfg


def _task_config(config: DictConfig) -> DictConfig:
    """``config`` without its ``hydra`` node, as a job's task function gets it (and cheaper to copy)."""
    with read_write(config), open_dict(config):
        del config["hydra"]
    return config


def _chooses_group(loader: Any, override: Any) -> bool:
    """Whether an override picks a config group option (it changes the defaults list, so the config must be
    composed for it); anything else sets a value."""
    if override.package is not None or override.is_delete():
        return True
    repository = getattr(loader, "repository", None)
    return repository is None or repository.group_exists(override.key_or_group)


def _describe(group: list[list[str]], jobs: list[list[str]]) -> str:
    """The jobs of ``group`` in few words: the overrides they share that the other jobs do not."""
    if len(group) == len(jobs):
        return f"all {len(jobs)} jobs"
    everywhere = set.intersection(*(set(j) for j in jobs))
    shared = [o for o in group[0] if all(o in j for j in group) and o not in everywhere]
    if len(group) == 1:
        return "the job " + " ".join(o for o in group[0] if o not in everywhere)
    return f"{len(group)} jobs with " + " ".join(shared) if shared else f"{len(group)} jobs"


def _resolved(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _missing_data(configs: list[tuple[list[str], DictConfig]], jobs: list[list[str]]) -> list[str]:
    seen: dict[str, list[list[str]]] = {}
    for job, cfg in configs:
        seen.setdefault(json.dumps(_resolved(cfg.dataset.source), sort_keys=True), []).append(job)
    missing = []
    for key, group in seen.items():
        try:
            check_data(json.loads(key))
        except NorgaError as err:  # a dataset missing or damaged
            missing.append((err, group))
    if not missing:
        return []
    from norga.data.errors import ROOT_HINT

    # where to point norga is said once, after every dataset's own message
    return [f"data of {_describe(group, jobs)}:\n" + str(err).replace("\n" + ROOT_HINT, "")
            for err, group in missing] + [ROOT_HINT]


def check_data(source: dict[str, Any]) -> None:
    """Raise DatasetNotFoundError if the files of a ``dataset.source`` node are missing: checked without
    reading them for norga's loaders, by loading the data for any other loader."""
    target, root, download = source.get("_target_", ""), str(source.get("root", "")), source.get("download")
    root = os.path.expanduser(root)
    if target == "norga.data.digits.load_digits":
        return  # shipped inside scikit-learn
    from norga.data import catalog

    if catalog.check_files(source):  # the benchmarks of norga.data.catalog (and CUB in either layout)
        return
    from norga.data import cifar, cub, five_datasets, imagenet_r
    from norga.data.errors import DatasetNotFoundError, combine

    if target == "norga.data.five_datasets.load_five_datasets":
        errors = []
        for locate, downloadable, _ in five_datasets._PARTS.values():  # the loader's own table of the five
            try:
                locate(root)
            except DatasetNotFoundError as err:
                if not (download and downloadable):
                    errors.append(err)
        if errors:
            raise combine(errors)
        return
    locators = {"norga.data.cifar.load_cifar100": (cifar.CIFAR100.locate, True),
                "norga.data.cifar.load_cifar10": (cifar.CIFAR10.locate, True),
                "norga.data.cub.load_cub200": (cub.locate_cub, False),
                "norga.data.imagenet_r.load_imagenet_r": (imagenet_r.locate_imagenet_r, False)}
    if target in locators:
        locate, downloadable = locators[target]
        if not (download and downloadable):
            locate(root)
        return
    from hydra.utils import instantiate

    try:  # a loader norga does not know: read the data (only its errors matter)
        instantiate(source)
    except Exception as err:
        cause: BaseException | None = err  # Hydra wraps what the loader raised
        while cause is not None and not isinstance(cause, DatasetNotFoundError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def _missing_checkpoints(configs: list[tuple[list[str], DictConfig]], jobs: list[list[str]]) -> list[str]:
    seen: dict[str, list[list[str]]] = {}
    for job, cfg in configs:
        file = cfg.backbone.get("checkpoint")
        if file and os.path.isfile(os.path.expanduser(str(file))):
            continue  # there (whether it loads is the run's to find out, in seconds)
        if cfg.backbone.get("pretrained", True):
            seen.setdefault(json.dumps(_resolved(cfg.backbone), sort_keys=True), []).append(job)
    if not seen:
        return []
    from norga.models.checkpoint_formats import CheckpointNotFoundError, check_checkpoint_available

    missing = []
    for key, group in seen.items():
        try:
            check_checkpoint_available(OmegaConf.create(json.loads(key)))
        except CheckpointNotFoundError as err:
            missing.append(f"backbone of {_describe(group, jobs)}:\n{err}")
    return missing


# ---- the Hugging Face hub -------------------------------------------------------------------------------------
def needs_hub(backbone: DictConfig) -> bool:
    """Whether a backbone node loads its weights through timm from the Hugging Face hub (or its cache)."""
    fmt = backbone.get("format")
    target = fmt.get("_target_") if isinstance(fmt, DictConfig) else None
    return bool(backbone.get("pretrained", True)) and target == _HUB_FORMAT and not backbone.get("checkpoint")


def hub_offline_if_unreachable(timeout: float = 2.0) -> bool:
    """Turn on the hub's offline mode (``HF_HUB_OFFLINE=1``, for this process and the jobs it starts) when
    the hub does not answer, so that a file that is not cached fails at once instead of after the hub
    client's retries (about 23 s per backbone). Returns whether offline mode is on. A user's own
    ``HF_HUB_OFFLINE`` is left as it is."""
    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ["HF_HUB_OFFLINE"].strip().lower() in ("1", "true", "yes", "on")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return False
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # the hub client reads the variable when it is imported
        constants.HF_HUB_OFFLINE = True
    log.info("the Hugging Face hub (%s) cannot be reached: HF_HUB_OFFLINE=1, only cached weights are used",
             endpoint)
    return True
