"""The bundled demo target: it loads from the installed package and its members are members."""

import json

import numpy as np

from jaxmia.data import DEMO_TARGET, load_dataset
from jaxmia.features import extract
from jaxmia.inference.metrics import auc
from jaxmia.models import load_denoiser, weights_digest


def test_demo_target_loads_and_matches_its_recipe():
    denoiser = load_denoiser("demo")
    recipe = json.loads((DEMO_TARGET / "recipe.json").read_text())
    split = json.loads((DEMO_TARGET / "split.json").read_text())
    assert denoiser.sample_shape == (8, 8, 1) and denoiser.cond_kind == "none"
    assert weights_digest(denoiser.params) == recipe["weights_sha256"] == denoiser.digest
    assert len(split["members"]) == recipe["recipe"]["n_members"]
    assert not set(split["members"]) & set(split["nonmembers"])
    assert len(split["members"]) + len(split["nonmembers"]) == 1797


def test_demo_members_have_lower_denoising_loss():
    denoiser = load_denoiser("demo")
    members = load_dataset("demo:members", image_shape=denoiser.input_shape).take(96, seed=1)
    nonmembers = load_dataset("demo:nonmembers", image_shape=denoiser.input_shape).take(96, seed=1)
    dl_m = extract(denoiser, members, "loss", batch_size=96, progress=False).column("dl")
    dl_n = extract(denoiser, nonmembers, "loss", batch_size=96, progress=False).column("dl")
    assert dl_m.mean() < 0.95 * dl_n.mean()
    # Realistic, not memorised to the bone: single-image AUC well above chance, well below 1.
    a = auc(np.r_[dl_m, dl_n], np.r_[np.ones(96), np.zeros(96)], lower_is_member=True)
    assert 0.6 < a < 0.95
