"""The ``evaluate`` metric module shipped with the package (``xmc_metric.py``), loadable offline."""

from __future__ import annotations

from pathlib import Path

__all__ = ["xmc_metric_path"]


def xmc_metric_path() -> str:
    """Folder to pass to ``evaluate.load`` (no Hub access needed)::

    metric = evaluate.load(xmc_metric_path())
    metric.compute(predictions=[[3, 1, 7]], references=[[1]], k=[1, 3])
    """
    return str(Path(__file__).resolve().parent)
