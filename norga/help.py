"""norga's own ``python run.py --help`` page, and the "did you mean" answer to a mistyped group option.

The page is built from ``conf/`` (so a new option shows up without editing it): each config group and its
options, the paper presets summarised instead of listed, the commands people run most, and where the docs
are. Hydra's own page stays one flag away (``--hydra-help``). Import-light: no Hydra, no torch.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"

# Groups a user picks on the command line, in the order a run is described; any other folder of conf/
# follows in alphabetical order (hydra/ and preset/ are described apart).
_ORDER = ("dataset", "backbone", "method", "gate", "optimizer", "scheduler", "logger", "debug", "bound", "sweep")
_HIDDEN = ("hydra", "preset")

COMMANDS = (
    ("the embedded default (digits, tiny ViT, NoRGa; about a minute on 2 CPU cores)", "python run.py"),
    ("a paper row (its preset is picked from dataset, backbone and method)",
     "python run.py dataset=imr backbone=ibot21k method=norga"),
    ("a sweep: every method x 3 seeds on one row", "python run.py +sweep=methods dataset=digits backbone=tiny"),
    ("the report: mean +- std per row, paper numbers, figures",
     "python -m norga.report outputs/ --paper --plot figures/"),
    ("resume a stopped run in its folder",
     "python run.py <same overrides> hydra.run.dir=<run dir> resume=true"),
)


def group_options(conf: Path = CONF) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for every config group folder of ``conf`` (``hydra`` and ``preset`` left
    out), groups in the order of :data:`_ORDER`."""
    groups = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in conf.iterdir()
              if d.is_dir() and d.name not in _HIDDEN}
    rank = {g: i for i, g in enumerate(_ORDER)}
    return {g: groups[g] for g in sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))}


def page(conf: Path = CONF) -> str:
    """The text of ``python run.py --help``."""
    lines = ["norga: rehearsal-free class-incremental learning on pre-trained ViTs: prompts, LoRA, adapters "
             "(Hydra app).", "",
             "usage: python run.py [group=option ...] [key=value ...]     one run",
             "       python run.py -m [key=a,b ...] | +sweep=<name> ...    a sweep", "",
             "Config groups and their options (pick one with group=option):"]
    groups = group_options(conf)
    names = {g: ("+" if g in ("bound", "sweep") else "") + g for g in groups}  # groups with no default
    width = max(len(n) for n in names.values())
    for group, options in groups.items():
        lines.append(f"  {names[group]:<{width}}  {', '.join(options)}")
    presets = sorted(f.stem for f in (conf / "preset").glob("*.yaml"))
    if presets:
        lines.append(f"  {'preset':<{width}}  {len(presets)} paper rows, picked automatically as "
                     "conf/preset/<dataset>_<backbone>_<method>.yaml (ls conf/preset)")
    lines += ["", "Most used commands:"]
    for what, command in COMMANDS:
        lines += [f"  {what}:", f"    {command}"]
    lines += ["", "More:",
              "  python run.py --cfg job [overrides]   the composed config (every key and its value)",
              "  python run.py --info defaults-tree    which config files set what",
              "  python run.py --hydra-help            Hydra's own flags and help",
              "  progress=false                        no progress bars",
              "Docs: README.md (running, outputs, errors, resuming, sweeps and reports), docs/algorithm.md "
              "(each method, presets, metrics), docs/architecture.md, docs/extending.md (a new method, dataset "
              "or backbone)."]
    return "\n".join(lines)


_MISSING = re.compile(r"Could not find '(?P<group>[\w/]+)/(?P<option>[^'/]+)'")


def explain_missing_option(err: BaseException, conf: Path = CONF) -> str | None:
    """The answer to Hydra's "Could not find 'method/l2q'": the option, the closest real ones ("did you mean
    l2p?") and all of them; None for any other error."""
    text = f"{err}\n{err.__cause__ or ''}"
    found = _MISSING.search(text)
    if not found:
        return None
    group, option = found["group"], found["option"]
    if group.startswith("hydra"):  # Hydra's plugins add options conf/ does not hold
        return None
    folder = conf / group
    options = sorted(f.stem for f in folder.glob("*.yaml")) if folder.is_dir() else []
    if not options:
        return None
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"{group}={option}: {group} has no option {option!r}; {hint}The options are {', '.join(options)} "
            f"(conf/{group}/). python run.py --help lists every group's options.")
