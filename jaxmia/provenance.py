"""What every JSON report carries: plain JSON values and the versions of the statistics stack."""

from __future__ import annotations

import platform

import numpy as np


def stats_versions() -> dict:
    """Versions of jaxmia and the NumPy/SciPy/scikit-learn stack a verdict was computed with."""
    import scipy
    import sklearn

    import jaxmia

    return {
        "jaxmia": jaxmia.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }


def jsonable(obj):
    """Converts NumPy scalars/arrays (and tuples) to plain JSON types, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj
