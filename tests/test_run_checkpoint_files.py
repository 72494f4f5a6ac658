"""The run's own checkpoints are read with weights_only=True: a file needing other pickled objects is refused
unread, and a damaged one is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from norga.engine.checkpoint import CorruptCheckpointError, load_checkpoint, save_atomic

UNPICKLED: list[str] = []


def _unpickle_marker(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class _PickledObject:
    """Any arbitrary pickled object: unpickling it calls a function (here a harmless marker)."""

    def __reduce__(self) -> tuple:
        return _unpickle_marker, ("ran",)


def test_what_a_run_stores_loads_with_weights_only(tmp_path: Path) -> None:
    # the kinds of values ContinualRun._state holds: module and optimizer state, lists of floats, None, strings
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
    state = {"cursor": {"task": 1, "stage": "wtp_train", "epoch": 2}, "learner": {"head": model.state_dict()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "run": {"acc": [[90.5], [88.0, 91.25]], "logger_run_id": None, "wall_time": 12.5},
             "config": {"seed": 42, "method": {"prompt_layers": [0, 1], "gate": "tanh"}}}
    save_atomic(state, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["run"] == state["run"] and loaded["config"] == state["config"]
    assert torch.equal(loaded["learner"]["head"]["weight"], model.weight)
    assert loaded["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]


def test_pickled_object_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_atomic({"cursor": {"task": 0}, "extra": _PickledObject()}, path)
    UNPICKLED.clear()
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "_unpickle_marker" in message and "resume=false" in message
    assert UNPICKLED == []  # nothing from the file ran


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n" * 8], ids=["empty", "text"])
def test_unreadable_file_is_named(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tii_stats_task_0.pt"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match="cannot be read") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
