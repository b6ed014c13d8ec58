"""DRC as a registered signal: ``extract(..., "drc")`` gives the ``jaxmia drc`` driver's per-task columns
(same kernel, same keys), with the registry's directions and group, and feeds the CDI scoring model."""

import numpy as np
import pytest

import jaxmia.features as F
from jaxmia.drc import DRCConfig, run_drc
from jaxmia.inference import CdiConfig, run_cdi
from jaxmia.table import load_table
from features_util import assert_close_across_programs, fast_compile, tiny_dataset, tiny_denoiser

SECTION = {"kinds": ["center", "patches"], "ratios": [0.25], "steps": 2, "restore": "repaint",
           "metrics": ["mse", "psnr", "ssim"], "score_metric": "psnr"}


def test_drc_signal_equals_the_drc_driver(tmp_path):
    den = tiny_denoiser()
    cfg = F.make_config("cdi", drc=SECTION)
    with fast_compile():
        p = F.extract(den, tiny_dataset(6, seed=0, prefix="p"), "loss,drc", config=cfg, seed=5, progress=False)
        u = F.extract(den, tiny_dataset(6, seed=1, prefix="u"), "loss,drc", config=cfg, seed=5, progress=False)
        ref = run_drc(den, tiny_dataset(6, seed=0, prefix="p"), DRCConfig(**SECTION), tmp_path, seed=5,
                             evidence=0, progress=False)
    table = load_table(ref["table"])
    cols = ["drc_mse_center_r25", "drc_mse_patches_r25", "drc_psnr_center_r25", "drc_psnr_patches_r25",
            "drc_ssim_center_r25", "drc_ssim_patches_r25"]
    # the driver adds its label-free drc_score (standardised across its own images); the signal cannot,
    # because P and U are separate tables
    assert list(p.names) == ["dl"] + cols and list(table.names) == cols + ["drc_score"] and ref["n_images"] == 6
    assert_close_across_programs(p.select(cols).values, table.rows(p.ids.tolist()).select(cols).values,
                                 err_msg="drc signal")
    assert p.meta["lower_is_member"] == ["dl", "drc_mse_center_r25", "drc_mse_patches_r25"]
    assert p.meta["higher_is_member"] == cols[2:] and p.meta["groups"]["drc"] == cols
    assert p.meta["config"]["drc"]["steps"] == 2 and p.meta["unet_evals_per_image"]["forward"] == 5 + 2 * 2  # dl's 5 draws + 2 tasks x 2 steps
    # the CDI scoring model consumes it by group
    r = run_cdi(p, u, CdiConfig(features="drc", permutations=19, curve=False))
    assert r["features"] == cols and 0 < r["verdict"]["p_value"] <= 1


def test_drc_signal_refuses_what_a_kernel_cannot_do():
    with pytest.raises(ValueError, match="feature 'drc': mask kind 'user' needs per-image holes"):
        F.plan_columns(["drc"], F.make_config("cdi", drc={"kinds": ["user"]}))
    with pytest.raises(ValueError, match="feature 'drc': metric 'cos' needs a host-side embedder"):
        F.plan_columns(["drc"], F.make_config("cdi", drc={"metrics": ["psnr", "cos"], "score_metric": "psnr"}))
