"""The mutation check: does the test suite notice when one guarantee breaks?

    python scripts/mutants.py                       # every mutant in tests/mutants.yaml
    python scripts/mutants.py --only resume-drops-optimizer-state cache-ignores-prompt
    python scripts/mutants.py --list

Each mutant in ``tests/mutants.yaml`` is a small breakage of one guarantee: ``edits`` (in ``file``, each
``old`` text, which must occur exactly once, becomes ``new``) and the ``tests`` that specify the guarantee.
For each mutant the script copies the repository's tracked files to a scratch directory, applies the edits,
runs those tests there (``pytest -x``) and reports CAUGHT (the tests fail) or MISSED (they pass: a hole in
the suite), with the seconds its tests took (and the total at the end). It exits non-zero if any mutant is
missed or cannot be applied (the code it names moved: update the list). The list grows with every
guarantee the suite adds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "tests" / "mutants.yaml"


@dataclass
class Mutant:
    name: str
    why: str
    file: str
    edits: list[tuple[str, str]]
    tests: list[str]


def load(path: Path = LIST) -> list[Mutant]:
    entries = OmegaConf.to_container(OmegaConf.load(path))
    return [Mutant(e["name"], e["why"], e["file"], [(x["old"], x["new"]) for x in e["edits"]], list(e["tests"]))
            for e in entries]


def copy_tree(dest: Path) -> None:
    """The tracked (and untracked, not ignored) files of the repository: what a fresh clone holds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def apply(mutant: Mutant, tree: Path) -> None:
    path = tree / mutant.file
    text = path.read_text()
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"mutant {mutant.name}: {old!r} occurs {count} times in {mutant.file} (needs exactly "
                             "one): the code moved, update tests/mutants.yaml")
        text = text.replace(old, new)
    path.write_text(text)


def run(mutant: Mutant, timeout: int) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as scratch:
        tree = Path(scratch)
        copy_tree(tree)
        try:
            apply(mutant, tree)
        except ValueError as err:
            return f"NOT APPLIED ({err})", 0.0
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        started = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   *mutant.tests], cwd=tree, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return "TIMEOUT", time.perf_counter() - started
        elapsed = time.perf_counter() - started
        if done.returncode == 0:
            return "MISSED", elapsed
        if done.returncode in (1,):  # tests failed: the suite noticed
            return "CAUGHT", elapsed
        return f"ERROR (pytest exit {done.returncode}: {done.stdout[-300:]})", elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="mutant names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)
    mutants = load()
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.why}")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutants})
        if unknown:
            parser.error(f"unknown mutants {unknown}; see --list")
        mutants = [m for m in mutants if m.name in args.only]
    results = []
    started = time.perf_counter()
    for m in mutants:
        outcome, seconds = run(m, args.timeout)
        results.append((m, outcome))
        print(f"{outcome.split(' ')[0]:8s} {seconds:6.0f}s  {m.name}: {m.why}", flush=True)
        if not outcome.startswith(("CAUGHT", "MISSED")):
            print(f"         {outcome}")
    caught = sum(outcome == "CAUGHT" for _, outcome in results)
    print(f"\n{caught} of {len(results)} mutants caught in {time.perf_counter() - started:.0f}s")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
