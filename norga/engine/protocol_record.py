"""What ``metrics.json`` records of a run's protocol: the names every number is labelled with, the class order,
the test images per task, and the four accuracies (:mod:`norga.metrics.pooled`)."""

from __future__ import annotations

from typing import Any

from norga.metrics.pooled import four_accuracies


def run_label(dataset: str, data_split: str, order: str, split: str, backbone: str, protocol: str) -> str:
    """``<dataset>/<data split>/<class order>/<B{init}Inc{inc}>/<backbone tag>/<protocol>``: a number is put
    beside a published one, or averaged with another run, only when every part is the same."""
    return "/".join([dataset, data_split or "-", order, split, backbone, protocol])


def protocol_record(cfg: Any, benchmark: Any, acc: list[list[float]], test_count: Any) -> dict[str, Any]:
    """The protocol's entries of ``metrics.json``; ``test_count(task)`` is the number of test images the
    evaluation of ``task`` scores (after ``eval.max_samples_per_task``)."""
    protocol = str(cfg.protocol)  # conf/config.yaml always sets one (its default protocol)
    data_split = getattr(benchmark, "data_split", "") or ""
    out: dict[str, Any] = {
        "protocol": protocol,
        "class_order": [int(c) for c in benchmark.class_order],
        "task_sizes": list(benchmark.task_sizes),
        "split": benchmark.split_name,
        "order": benchmark.order_label,
        "data_split": data_split,
        "label": run_label(str(cfg.dataset.name), data_split, benchmark.order_label, benchmark.split_name,
                           str(cfg.backbone.name), protocol),
        "test_counts": [int(test_count(t)) for t in range(benchmark.num_tasks)],
    }
    if cfg.dataset.get("accept_license"):
        out["license_accepted"] = True  # the user opted in to a licence that restricts training on the data
        out["label"] += "/license-accepted"
    if acc:
        out.update(four_accuracies(acc, out["test_counts"]))
    return out
