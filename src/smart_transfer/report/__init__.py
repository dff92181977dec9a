"""The HTML report of a training run, and the plots it is made of.

    from smart_transfer.report import make_report
    path = make_report("runs/demo/smart-kernel")        # -> runs/demo/smart-kernel/report.html

Every figure comes from a function in :mod:`smart_transfer.report.plots` that takes
``ax=None`` and returns the axes, so the same plots can be placed in a notebook.
"""

from __future__ import annotations

from . import plots
from .html import SECTIONS, make_report
from .run import RunData, Samples, load_run

__all__ = ["SECTIONS", "RunData", "Samples", "load_run", "make_report", "plots"]
