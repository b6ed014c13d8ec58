"""The typed, frozen configuration of the feature extractors, and its named presets.

Every hyperparameter and every reference quirk (docs/methods/cdi.md §10, Q1–Q5, Q11) is one typed field of
:class:`FeatureConfig`. Presets are dictionaries of field overrides on top of the defaults:

* ``cdi`` (default): the CDI feature set with jaxmia's corrected behaviour (right column of §10);
* ``cdi_reference``: every quirk switched to the reference implementation (middle column of §10);
* ``secmi_mia``: SecMI_stat as the SecMI authors' code runs it (t_sec = 100, k = 10, compare at 90,
  squared norm; docs/methods/mia.md §3.2);
* ``pia_mia``: PIA/PIAN as the PIA authors' code runs it on DDPM (t = 200, p = 4 without the root,
  PIAN scaled to √(2/π); docs/methods/mia.md §3.3–3.4);
* ``loss_mia``: the naive loss attack as in PIA's table (t = 200, one draw, squared L2; §3.1).

Each preset also names the signals it runs (:data:`PRESET_SIGNALS`; ``jaxmia features --preset P`` runs
them unless ``--features`` says otherwise); ``cdi_drc`` adds the DRC signal to the CDI vector.

A signal may own a config section besides the flat fields (its registration's ``section``, e.g. ``drc``
holds a :class:`jaxmia.drc.DRCConfig`): ``cfg.section("drc")``, set with ``make_config(drc={...})`` or
``--set features.drc.steps=10`` (``[features.drc]`` in a TOML file), parsed by :mod:`jaxmia.config`
(:func:`jaxmia.config.sections_field`), written as a nested ``"drc"`` entry of :meth:`FeatureConfig.to_dict`.

An unknown field, in a preset, an override or a resumed run, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, Mapping, Sequence

from jaxmia import config as typed
from jaxmia.features.norms import check_norm

DEFAULT_TIMESTEPS = tuple(range(0, 1000, 100))  # 0, 100, ..., 900 (ML and GM, docs/methods/cdi.md §4.4-4.5)
PIAN_SCALES = ("gaussian_mean_abs", "cdi_reference")
NO_MODES = ("per_example", "reference")

# signal name -> the dataclass of its own config section (filled by register_feature(section=...)).
SECTION_TYPES: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Hyperparameters of every built-in signal (docs/methods/cdi.md §4.8 defaults).

    Attributes:
      dl_timestep, dl_n_draws, dl_norm: Denoising Loss (§4.1): t = 100, 5 independent draws,
        unsquared L2, averaged.
      secmi_t_cmp, secmi_stride, secmi_norm: SecMI_stat (§4.2): invert 0 → t_cmp with stride k,
        one more step up and back, compare at t_cmp. CDI: t_cmp = 100, L2 (Q2). SecMI's code:
        t_cmp = 90, squared.
      pia_timestep, pia_p, pia_root, pian_scale: PIA / PIAN (§4.3). ``pian_scale``
        ``gaussian_mean_abs`` = √(2/π) (PIA paper and code; default), ``cdi_reference`` = √(π/2) (Q1).
      ml_timesteps, ml_n_draws, ml_norm: Multiple Loss (§4.4); one shared draw per image (Q5);
        ``ml_n_draws > 1`` averages per t (opt-in extension).
      gm_timesteps, gm_ratio: Gradient Masking (§4.5).
      share_draws: GM uses ML's noise draw, so GM's gradient pass also yields ML (Q11). False: GM
        draws its own noise, as the reference's separate runs do.
      no_timestep, no_max_iter, no_mode, no_double_noise, no_memory_size, no_max_linesearch_steps:
        Noise Optimisation (§4.6). ``per_example`` (default): L-BFGS per sample under vmap (Q3);
        ``reference``: SciPy L-BFGS-B over each whole flat batch. ``no_double_noise`` re-noises the
        optimised point before the final loss, as the reference does (Q4).
      sections: the config sections of registered signals that own one, as sorted ``(name, config)``
        pairs (hashable); read with :meth:`section`, built by :func:`make_config`.
    """

    dl_timestep: int = 100
    dl_n_draws: int = 5
    dl_norm: str = "l2"

    secmi_t_cmp: int = 100
    secmi_stride: int = 10
    secmi_norm: str = "l2"

    pia_timestep: int = 200
    pia_p: float = 5.0
    pia_root: bool = True
    pian_scale: str = "gaussian_mean_abs"

    ml_timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    ml_n_draws: int = 1
    ml_norm: str = "l2"

    gm_timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    gm_ratio: float = 0.2
    share_draws: bool = True

    no_timestep: int = 100
    no_max_iter: int = 5
    no_mode: str = "per_example"
    no_double_noise: bool = False
    no_memory_size: int = 10
    no_max_linesearch_steps: int = 20

    sections: tuple = typed.sections_field(SECTION_TYPES)

    def __post_init__(self):
        typed.coerce_fields(self)  # the one parser: types, lists -> tuples, ints widened, sections built
        for name in ("ml_timesteps", "gm_timesteps"):
            value = getattr(self, name)
            if not value or min(value) < 0:
                raise ValueError(f"{name}: need at least one timestep, all >= 0 (got {value})")
        for name in ("dl_norm", "secmi_norm", "ml_norm"):
            check_norm(getattr(self, name), field=name)
        for name in ("dl_n_draws", "ml_n_draws", "secmi_stride", "no_memory_size", "no_max_linesearch_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)})")
        for name in ("dl_timestep", "pia_timestep", "no_timestep", "no_max_iter"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: must be >= 0 (got {getattr(self, name)})")
        if self.secmi_t_cmp < self.secmi_stride or self.secmi_t_cmp % self.secmi_stride:
            raise ValueError(
                f"secmi_t_cmp: must be a positive multiple of secmi_stride={self.secmi_stride} (got {self.secmi_t_cmp})"
            )
        if not self.pia_p > 0:
            raise ValueError(f"pia_p: must be > 0 (got {self.pia_p})")
        if self.pian_scale not in PIAN_SCALES:
            raise ValueError(f"pian_scale: unknown value {self.pian_scale!r}; known: {', '.join(PIAN_SCALES)}")
        if not 0 < self.gm_ratio <= 1:
            raise ValueError(f"gm_ratio: must be in (0, 1] (got {self.gm_ratio})")
        if self.no_mode not in NO_MODES:
            raise ValueError(f"no_mode: unknown value {self.no_mode!r}; known: {', '.join(NO_MODES)}")

    def to_dict(self) -> dict:
        """The flat fields, then each set section as a nested ``{name: {field: value}}`` entry."""
        return typed.to_mapping(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def section(self, name: str):
        """The config section of signal ``name``: the one set here, or its registered defaults."""
        got = dict(self.sections)
        if name in got:
            return got[name]
        if name not in SECTION_TYPES:
            raise ValueError(f"no config section {name!r}; signals with one: {', '.join(sorted(SECTION_TYPES)) or 'none'}")
        return SECTION_TYPES[name]()

    def with_sections(self, **sections) -> "FeatureConfig":
        """A copy with these sections (section objects, or ``{field: value}`` overrides of the current one)."""
        typed.check_keys(sections, tuple(SECTION_TYPES), source="FeatureConfig.with_sections", what="config section")
        return typed.apply_overrides(self, sections, source="FeatureConfig.with_sections", what="feature config")

    def max_timestep(self, names: Sequence[str] | None = None) -> int:
        """The largest timestep the signals ``names`` (default: every registered one) query.

        Derived from the registrations' ``timesteps`` (:func:`jaxmia.features.registry.plan_max_timestep`).
        """
        from jaxmia.features.registry import FEATURES, plan_max_timestep

        return plan_max_timestep(tuple(FEATURES) if names is None else names, self)


def _flat_fields():
    return [f for f in dataclasses.fields(FeatureConfig) if f.name != "sections"]


FIELD_NAMES = tuple(f.name for f in _flat_fields())


PRESETS: dict[str, dict[str, Any]] = {
    "cdi": {},
    "cdi_reference": {
        "pian_scale": "cdi_reference",  # Q1
        "no_mode": "reference",  # Q3
        "no_double_noise": True,  # Q4
        "ml_n_draws": 1,  # Q5: the config's n_repetitions is never used
        "share_draws": False,  # Q11: GM and ML run separately, with independent draws
    },
    "secmi_mia": {"secmi_t_cmp": 90, "secmi_stride": 10, "secmi_norm": "squared_l2"},
    "pia_mia": {"pia_timestep": 200, "pia_p": 4.0, "pia_root": False, "pian_scale": "gaussian_mean_abs"},
    "loss_mia": {"dl_timestep": 200, "dl_n_draws": 1, "dl_norm": "squared_l2"},
    "cdi_drc": {},
}
# The signals each preset runs (``jaxmia features --preset P`` without ``--features``).
PRESET_SIGNALS: dict[str, tuple[str, ...]] = {
    "cdi": ("cdi",),
    "cdi_reference": ("cdi",),
    "secmi_mia": ("secmi",),
    "pia_mia": ("pia", "pian"),
    "loss_mia": ("loss",),
    "cdi_drc": ("cdi", "drc"),
}


def preset_signals(preset: str | None) -> tuple[str, ...]:
    """The signals preset ``preset`` runs (an unknown preset is an error naming the known ones)."""
    name = "cdi" if preset is None else str(preset)
    if name not in PRESET_SIGNALS:
        raise ValueError(f"unknown feature preset {name!r}; known: {', '.join(PRESET_SIGNALS)}")
    return PRESET_SIGNALS[name]


def make_config(preset: str | FeatureConfig | None = "cdi", **overrides: Any) -> FeatureConfig:
    """A :class:`FeatureConfig` from a preset name (or a config) plus typed field overrides."""
    if isinstance(preset, FeatureConfig):
        base = preset
    else:
        name = "cdi" if preset is None else str(preset)
        if name not in PRESETS:
            raise ValueError(f"unknown feature preset {name!r}; known: {', '.join(PRESETS)}")
        base = FeatureConfig(**PRESETS[name])
    if not overrides:
        return base
    return typed.apply_overrides(base, overrides, source="config override", what="feature config")


def config_from_dict(values: Mapping[str, Any], *, source: str = "feature config") -> FeatureConfig:
    """A :class:`FeatureConfig` from a mapping (a table's meta, a ``config.json``; a signal's section as a
    nested ``name`` table): :func:`jaxmia.config.from_mapping`."""
    return typed.from_mapping(FeatureConfig, values, source=source, what="feature config")


def _number_or_text(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["no_mode=reference", "ml_timesteps=0,500", "drc.steps=10"]`` -> typed overrides: the section-less
    form of ``features --set features.FIELD=VALUE`` (deprecated), parsed by :func:`jaxmia.config.parse_set`.

    ``SIGNAL.FIELD=VALUE`` sets a field of a signal's own section (typed by the section's hints).
    """
    values = typed.parse_set([f"features.{item}" for item in items]).get("features", {})
    return typed_overrides(values, source="config override")


def typed_overrides(values: Mapping[str, Any], *, source: str, prefix: str = "") -> dict[str, Any]:
    """``values`` (flat fields, and signal sections as nested tables) checked and converted by the hints of
    :class:`FeatureConfig` and of each section (:func:`jaxmia.config.coerce`); unknown keys are refused."""
    typed.check_keys(values, (*FIELD_NAMES, *SECTION_TYPES), source=source, what="feature config", prefix=prefix)
    hints = typing.get_type_hints(FeatureConfig)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SECTION_TYPES:
            out[key] = typed.coerce(value, hints[key], path=prefix + key, source=source)
            continue
        where = f"{prefix}{key}"
        if not isinstance(value, Mapping):
            raise ValueError(f"{source}: {where} must be a table ({SECTION_TYPES[key].__name__}), got {value!r}")
        section_hints = typing.get_type_hints(SECTION_TYPES[key])
        known = [f.name for f in dataclasses.fields(SECTION_TYPES[key]) if f.init]
        typed.check_keys(value, known, source=source, what=f"{key} config", prefix=f"{where}.")
        out[key] = {k: typed.coerce(v, section_hints[k], path=f"{where}.{k}", source=source) for k, v in value.items()}
    return out


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable differences ``key: a -> b`` between two JSON-like config dicts."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys if a.get(k) != b.get(k)]


def flatten_nested(d: Mapping[str, Any], prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested JSON-like dicts as dotted keys (for diffs)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_nested(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
