"""The report stage: typed sections built once (``sections``), written once (``write_report``).

``report.json`` (every number), ``report.html`` (one self-contained page, images embedded) and the
plots; ``outputs`` writes the CDI and MIA folders (also used by ``jaxmia cdi`` / ``jaxmia mia``).
"""

from jaxmia.report.html import write_html_report  # noqa: F401
from jaxmia.report.outputs import write_cdi_report  # noqa: F401
from jaxmia.report.outputs import write_mia_report  # noqa: F401
from jaxmia.report.sections import AuditReport  # noqa: F401
from jaxmia.report.write import write_report  # noqa: F401
