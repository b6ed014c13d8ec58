"""The audit: features → calibrated test → evidence → report, in one call."""

from jaxmia.audit.config import AuditConfig, AuditSettings, load_config, parse_set  # noqa: F401
from jaxmia.audit.demo import run_demo  # noqa: F401
from jaxmia.audit.run import run_audit  # noqa: F401
