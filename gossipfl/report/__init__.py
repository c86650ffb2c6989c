"""``report.html``: a run folder (``report.json`` and the nodes' ``metrics.jsonl``) as one
self-contained page of figures and tables (see :mod:`gossipfl.report.html`)."""

from gossipfl.report.data import ReportError, RunData, load_run
from gossipfl.report.html import build_html, try_write_report_html, write_report_html

__all__ = ["ReportError", "RunData", "build_html", "load_run", "try_write_report_html",
           "write_report_html"]
