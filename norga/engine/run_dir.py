"""Admitting a run into its directory: the refusals of :mod:`norga.engine.record` checked on rank 0 before
anything is written (their verdict shared with the other ranks), and the record opened."""

from __future__ import annotations

from pathlib import Path

from norga.engine import record
from norga.engine.checkpoint import load_checkpoint
from norga.engine.distributed import DistInfo, broadcast_object
from norga.errors import NorgaError, RunRefusedError
from norga.protocol_defaults import with_protocol_defaults


def accept_run_dir(run_dir: Path, resume: bool, config: dict, dist: DistInfo) -> dict | None:
    """Raise :class:`RunRefusedError` for a run that would change the record of the run already in
    ``run_dir`` (a start without ``resume``; a resume whose resolved ``config`` differs in keys that change
    results); on every rank. Returns ``last.pt``'s state for a resume (read on rank 0; None elsewhere)."""
    refusal, state = None, None
    if dist.is_main:
        try:
            state = _check(run_dir, resume, config)
        except NorgaError as err:
            refusal = err
    if dist.distributed:
        message = broadcast_object(None if refusal is None else str(refusal))
        if refusal is None and message is not None:
            refusal = RunRefusedError(message)
    if refusal is not None:
        raise refusal
    return state


def _check(run_dir: Path, resume: bool, config: dict) -> dict | None:
    if not resume:
        record.refuse_new_run(run_dir)
        return None
    record.refuse_missing_last(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last) if last.is_file() else None
    recorded = state["config"] if state is not None else record.recorded_config(run_dir)
    recorded = with_protocol_defaults(recorded)  # a run recorded before protocol keys existed
    record.refuse_changed_config(run_dir, recorded, config)
    return state


def open_record(run_dir: Path, launch: dict[str, str], is_main: bool) -> None:
    """Write how the run was launched (:func:`norga.engine.record.open_record`), on rank 0."""
    if is_main:
        record.open_record(run_dir, launch, resumed=bool(record.record_files(run_dir)))
