"""The reviewer report: built as plain data, checked against its schema, rendered.

* ``harness.report.build``: ``build_report()`` measures everything and returns a JSON-ready
  dict; every list in it comes from the registry.
* ``harness.report.schema``: ``REPORT_SCHEMA``, the contract other tools read; complete,
  so a report that validates renders.
* ``harness.report.render``: Markdown, JSON and HTML renderings of the same tables.

``python -m harness report`` is ``harness.cli.report``.
"""

from __future__ import annotations

from harness.report.build import FULL, QUICK, Plan, Progress, Verdict, build_report, verdict
from harness.report.render import RENDERERS, Table, render_html, render_json, render_markdown, tables
from harness.report.schema import REPORT_SCHEMA, validate

__all__ = ["FULL", "QUICK", "REPORT_SCHEMA", "RENDERERS", "Plan", "Progress", "Table", "Verdict",
           "build_report", "render_html", "render_json", "render_markdown", "tables", "validate", "verdict"]
