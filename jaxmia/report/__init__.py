"""Human-readable audit reports: one self-contained HTML page (images embedded)."""

from jaxmia.report.html import write_html_report  # noqa: F401
