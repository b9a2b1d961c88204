"""Figures and the self-contained HTML report of a run folder (:func:`fatebias_core.report.build.build_report`).

Importing this package is cheap: the page's builders (matplotlib, Jinja2) load with
:mod:`fatebias_core.report.build`.
"""

from fatebias_core.io.layout import REPORT as REPORT_FILE

__all__ = ["REPORT_FILE"]
