"""The report: accuracy against deployment cost, with which differences are real.

    rows     Row, Report and what a row costs (imports nothing of toolkit.report)
    join     the rows, from metrics, exports/parity and the bench files
    judge    which differences are real; the fronts
    pick     the budget and the pick
    build    build_report / write_report / make_report (and the pick record serve reads)
    columns  the one column list (terminal, CSV, markdown, toolkit bench's table)
    plots    accuracy against latency, size and memory

The public API is re-exported here: `from toolkit import report; report.build_report(root)`.
"""

from toolkit.report.build import build_report, make_report, write_report
from toolkit.report.judge import Judge, mark_fronts, mark_overlaps, pareto_front
from toolkit.report.pick import Budget, recommend, usable
from toolkit.report.rows import Comparison, MemoryFigures, Report, Row

__all__ = ["Budget", "Comparison", "Judge", "MemoryFigures", "Report", "Row", "build_report", "make_report",
           "mark_fronts", "mark_overlaps", "pareto_front", "recommend", "usable", "write_report"]
