"""Distribution-shift checks: is the verdict about training, or about how P and U were made? (issue 16)

* :mod:`jaxmia.shift.blind`: the blind baseline (model-free features, the verdict's test);
* :mod:`jaxmia.shift.processing`: mild processings (blur, JPEG, resize, brightness);
* :mod:`jaxmia.shift.sensitivity`: which processing alone would make the model test say "trained";
* :mod:`jaxmia.shift.match`: compare P's and U's files, and re-save U like P.

NumPy / SciPy / Pillow only (no JAX); see docs/inference.md §10.
"""

from jaxmia.shift.blind import DESCRIPTIONS
from jaxmia.shift.blind import blind_table
from jaxmia.shift.blind import blind_test
from jaxmia.shift.blind import closest_processing
from jaxmia.shift.blind import file_features
from jaxmia.shift.blind import pixel_features
from jaxmia.shift.blind import separating_features
from jaxmia.shift.blind import mean_change
from jaxmia.shift.match import compare_files
from jaxmia.shift.match import make_like
from jaxmia.shift.match import make_like_folder
from jaxmia.shift.match import summarise_files
from jaxmia.shift.match import target_like
from jaxmia.shift.processing import DEFAULT_SENSITIVITY
from jaxmia.shift.processing import PROCESSINGS
from jaxmia.shift.processing import apply_processing
from jaxmia.shift.processing import describe_processing
from jaxmia.shift.processing import parse_processing
from jaxmia.shift.sensitivity import processing_sensitivity
from jaxmia.shift.sensitivity import split_halves
