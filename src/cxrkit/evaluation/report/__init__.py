"""The self-contained HTML evaluation report (figures inlined as base64 PNG; no external resources)."""
from cxrkit.evaluation.report.html import render_report

__all__ = ["render_report"]
