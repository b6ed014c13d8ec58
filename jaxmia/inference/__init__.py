"""Inference: feature tables in, verdict out. NumPy/SciPy/scikit-learn only (no JAX).

Scoring model (docs/methods/cdi.md §5), calibrated and reference tests (§6), sample-count / null /
contamination curves (§7–§8), MIA metrics (docs/methods/mia.md §2.3–§2.4), plots, and the CDI options.
See docs/inference.md. The drivers live in :mod:`jaxmia.cdi` and :mod:`jaxmia.mia`; their old names here
(``run_cdi``, ``evaluate_mia``, ...) still resolve, deprecated (:mod:`jaxmia.inference.report`).
"""

from jaxmia.inference.curves import CONTAMINATION_NS
from jaxmia.inference.curves import CONTAMINATION_RATIOS
from jaxmia.inference.curves import CurveResult
from jaxmia.inference.curves import DEFAULT_GRID
from jaxmia.inference.curves import contamination_curve
from jaxmia.inference.curves import curve_cell
from jaxmia.inference.curves import default_grid
from jaxmia.inference.curves import null_calibration
from jaxmia.inference.curves import sample_count_curve
from jaxmia.inference.curves import score_resample_curve
from jaxmia.inference.curves import summarise_null
from jaxmia.inference.metrics import RocCurve
from jaxmia.inference.metrics import asr_oracle
from jaxmia.inference.metrics import auc
from jaxmia.inference.metrics import mia_metrics
from jaxmia.inference.metrics import roc_curve_exact
from jaxmia.inference.metrics import secmi_grid_roc
from jaxmia.inference.metrics import tpr_at_fpr
from jaxmia.inference.plots import plot_pvalue_curve
from jaxmia.inference.plots import plot_roc_curves
from jaxmia.inference.plots import plot_score_histograms
from jaxmia.inference.report import CdiConfig
from jaxmia.inference.report import MiaConfig
from jaxmia.inference.report import config_from_dict
from jaxmia.inference.scoring import Standardiser
from jaxmia.inference.scoring import crossfit_scores
from jaxmia.inference.scoring import crossfit_scores_batched
from jaxmia.inference.scoring import fit_logistic_batched
from jaxmia.inference.scoring import fit_standardiser
from jaxmia.inference.scoring import fixed_split_scores
from jaxmia.inference.scoring import kfold_assignment
from jaxmia.inference.scoring import resolve_features
from jaxmia.inference.scoring import table_groups
from jaxmia.inference.stat_tests import InferenceResult
from jaxmia.inference.stat_tests import DEFAULT_TEST
from jaxmia.inference.stat_tests import REFERENCE_FPR_NOTE
from jaxmia.inference.stat_tests import ScoredResult
from jaxmia.inference.stat_tests import format_p
from jaxmia.inference.stat_tests import hybrid_pvalues
from jaxmia.inference.stat_tests import hybrid_test
from jaxmia.inference.stat_tests import permutation_pvalues
from jaxmia.inference.stat_tests import permutation_statistics
from jaxmia.inference.stat_tests import permutation_test
from jaxmia.inference.stat_tests import reference_pvalues
from jaxmia.inference.stat_tests import rademacher_tail_log10
from jaxmia.inference.stat_tests import reference_test
from jaxmia.inference.stat_tests import scores_hybrid_test
from jaxmia.inference.stat_tests import scores_permutation_test
from jaxmia.inference.stat_tests import signflip_tail_pvalues
from jaxmia.inference.stat_tests import split_pvalues
from jaxmia.inference.stat_tests import split_test
from jaxmia.inference.stat_tests import welch_test


def __getattr__(name: str):
    """Deprecated driver names (``jaxmia.inference.run_cdi`` ...), resolved where they live now."""
    from jaxmia.inference import report

    if name in report._MOVED:
        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
