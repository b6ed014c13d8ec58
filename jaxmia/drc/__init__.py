"""DRC: degrade (masks), restore (diffusion inpainting), compare (image metrics), with evidence.

"Model Will Tell: Training Membership Inference for Diffusion Models" (Fu et al., arXiv
2403.08487), implemented as jaxmia's DRC-style recipe (docs/methods/mia.md §4.2); label results
"DRC-style (jaxmia recipe)".
"""

from jaxmia.drc.aggregate import DRCCalibration  # noqa: F401
from jaxmia.drc.aggregate import agree_number  # noqa: F401
from jaxmia.drc.aggregate import agree_rank_score  # noqa: F401
from jaxmia.drc.aggregate import aggregate_table  # noqa: F401
from jaxmia.drc.aggregate import check_disjoint  # noqa: F401
from jaxmia.drc.aggregate import decision_curve  # noqa: F401
from jaxmia.drc.aggregate import drc_score  # noqa: F401
from jaxmia.drc.aggregate import fit_calibration  # noqa: F401
from jaxmia.drc.aggregate import mean_z_score  # noqa: F401
from jaxmia.drc.config import DRCConfig  # noqa: F401
from jaxmia.drc.config import MASK_KINDS  # noqa: F401
from jaxmia.drc.config import METRICS  # noqa: F401
from jaxmia.drc.config import Task  # noqa: F401
from jaxmia.drc.config import tasks  # noqa: F401
from jaxmia.drc.config import with_embedding_metric  # noqa: F401
from jaxmia.drc.driver import jit_drc_batch  # noqa: F401
from jaxmia.drc.driver import run_drc  # noqa: F401
from jaxmia.drc.evidence import evidence_grid  # noqa: F401
from jaxmia.drc.evidence import summary_grid  # noqa: F401
from jaxmia.drc.evidence import to_uint8  # noqa: F401
from jaxmia.drc.features import COLUMNS  # noqa: F401
from jaxmia.drc.features import drc_features  # noqa: F401
from jaxmia.drc.features import drc_one  # noqa: F401
from jaxmia.drc.masks import center_mask  # noqa: F401
from jaxmia.drc.masks import hole_fraction  # noqa: F401
from jaxmia.drc.masks import purpose_keys  # noqa: F401
from jaxmia.drc.masks import make_mask  # noqa: F401
from jaxmia.drc.masks import patch_mask  # noqa: F401
from jaxmia.drc.masks import rect_mask  # noqa: F401
from jaxmia.drc.masks import task_masks  # noqa: F401
from jaxmia.drc.masks import user_masks  # noqa: F401
from jaxmia.drc.metrics import ORIENTATION  # noqa: F401
from jaxmia.drc.metrics import compare  # noqa: F401
from jaxmia.drc.metrics import masked_mse  # noqa: F401
from jaxmia.drc.metrics import masked_ssim  # noqa: F401
from jaxmia.drc.metrics import model_distance  # noqa: F401
from jaxmia.drc.metrics import orient  # noqa: F401
from jaxmia.drc.metrics import psnr  # noqa: F401
from jaxmia.drc.metrics import ssim_map  # noqa: F401
from jaxmia.drc.restore import RestorePlan  # noqa: F401
from jaxmia.drc.restore import inpaint_one  # noqa: F401
from jaxmia.drc.restore import invert_one  # noqa: F401
from jaxmia.drc.restore import network_calls_per_image  # noqa: F401
from jaxmia.drc.restore import restore_one  # noqa: F401
from jaxmia.drc.restore import restore_plan  # noqa: F401
