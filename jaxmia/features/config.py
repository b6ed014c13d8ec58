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
``--set drc.steps=10``, written as a nested ``"drc"`` entry of :meth:`FeatureConfig.to_dict`.

An unknown field, in a preset, an override or a resumed run, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, Mapping, Sequence

import numpy as np

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

    sections: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "sections", _check_sections(self.sections))
        hints = typing.get_type_hints(FeatureConfig)
        for f in _flat_fields():
            value, hint = getattr(self, f.name), hints[f.name]
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif hint in (int, bool, str) and not (type(value) is hint or (hint is int and isinstance(value, np.integer))):
                raise ValueError(f"{f.name}: expected {hint.__name__}, got {value!r}")
            elif hint is float and not isinstance(value, (float, np.floating)):
                raise ValueError(f"{f.name}: expected float, got {value!r}")
            elif hint is int:
                object.__setattr__(self, f.name, int(value))
        for name in ("ml_timesteps", "gm_timesteps"):
            raw = getattr(self, name)
            if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
                raise ValueError(f"{name}: expected a sequence of ints, got {raw!r}")
            value = tuple(int(t) for t in raw)
            if not value or min(value) < 0:
                raise ValueError(f"{name}: need at least one timestep, all >= 0 (got {value})")
            object.__setattr__(self, name, value)
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
        out = {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in _flat_fields()}
        for name, section in self.sections:
            out[name] = _plain(dataclasses.asdict(section))
        return out

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
        """A copy with these sections (section objects or ``{field: value}`` overrides of the current one)."""
        merged = dict(self.sections)
        for name, value in sections.items():
            merged[name] = value if not isinstance(value, Mapping) else _build_section(
                name, {**(_plain(dataclasses.asdict(self.section(name)))), **value})
        return dataclasses.replace(self, sections=tuple(merged.items()))

    def max_timestep(self, names: Sequence[str] | None = None) -> int:
        """The largest timestep the signals ``names`` (default: every registered one) query.

        Derived from the registrations' ``timesteps`` (:func:`jaxmia.features.registry.plan_max_timestep`).
        """
        from jaxmia.features.registry import FEATURES, plan_max_timestep

        return plan_max_timestep(tuple(FEATURES) if names is None else names, self)


def _flat_fields():
    return [f for f in dataclasses.fields(FeatureConfig) if f.name != "sections"]


FIELD_NAMES = tuple(f.name for f in _flat_fields())


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build_section(name: str, values: Mapping[str, Any]):
    """Section ``name`` from a mapping: unknown fields are an error naming them; lists become tuples."""
    if name not in SECTION_TYPES:
        raise ValueError(f"unknown config section {name!r}; signals with one: {', '.join(sorted(SECTION_TYPES)) or 'none'}")
    cls = SECTION_TYPES[name]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"config section {name!r}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})


def _check_sections(sections) -> tuple:
    items = sections.items() if isinstance(sections, Mapping) else sections
    out = {}
    for name, value in items:
        value = _build_section(name, value) if isinstance(value, Mapping) else value
        if name not in SECTION_TYPES or not isinstance(value, SECTION_TYPES[name]):
            raise ValueError(f"config section {name!r}: not a registered section of that type (got {value!r}); "
                             f"signals with one: {', '.join(sorted(SECTION_TYPES)) or 'none'}")
        out[name] = value
    return tuple(sorted(out.items()))


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


def _check_fields(names, *, source: str) -> None:
    unknown = [n for n in names if n not in FIELD_NAMES and n not in SECTION_TYPES]
    if unknown:
        known = ", ".join(FIELD_NAMES + tuple(f"{s}.*" for s in sorted(SECTION_TYPES)))
        raise ValueError(f"{source}: unknown feature config field(s) {', '.join(map(repr, unknown))}; known: {known}")


def _split_sections(values: Mapping[str, Any]) -> tuple[dict, dict]:
    flat = {k: v for k, v in values.items() if k not in SECTION_TYPES}
    return flat, {k: v for k, v in values.items() if k in SECTION_TYPES}


def make_config(preset: str | FeatureConfig | None = "cdi", **overrides: Any) -> FeatureConfig:
    """A :class:`FeatureConfig` from a preset name (or a config) plus typed field overrides."""
    if isinstance(preset, FeatureConfig):
        base = preset
    else:
        name = "cdi" if preset is None else str(preset)
        if name not in PRESETS:
            raise ValueError(f"unknown feature preset {name!r}; known: {', '.join(PRESETS)}")
        base = FeatureConfig(**PRESETS[name])
    _check_fields(overrides, source="config override")
    flat, sections = _split_sections(overrides)
    cfg = dataclasses.replace(base, **flat) if flat else base
    return cfg.with_sections(**sections) if sections else cfg


def config_from_dict(values: Mapping[str, Any], *, source: str = "feature config") -> FeatureConfig:
    _check_fields(values, source=source)
    flat, sections = _split_sections(values)
    return FeatureConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in flat.items()}, sections=sections)


def _parse_value(name: str, text: str, hint=None):
    hint = typing.get_type_hints(FeatureConfig)[name] if hint is None else hint
    if typing.get_origin(hint) is typing.Union or type(None) in typing.get_args(hint):
        if text.strip().lower() in ("none", "null"):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is tuple:  # an untyped tuple (section fields): numbers stay numbers, the rest text
        return tuple(_number_or_text(t.strip()) for t in text.split(",") if t.strip())
    try:
        if hint is bool:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is str:
            return text.strip()
        return tuple(int(t) for t in text.split(",") if t.strip())  # tuple[int, ...]
    except ValueError:
        raise ValueError(f"config override {name}={text!r}: not a valid {getattr(hint, '__name__', hint)}") from None


def _number_or_text(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["no_mode=reference", "ml_timesteps=0,500", "drc.steps=10"]`` -> typed overrides (CLI ``--set``).

    ``SECTION.FIELD=VALUE`` sets a field of a signal's own section (typed by the section's hints).
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"config override {item!r}: expected FIELD=VALUE or SECTION.FIELD=VALUE")
        name, text = item.split("=", 1)
        name = name.strip()
        if "." in name:
            section, field = name.split(".", 1)
            _check_fields([section], source="config override")
            hints = typing.get_type_hints(SECTION_TYPES[section]) if section in SECTION_TYPES else {}
            if field not in hints:
                raise ValueError(f"config override {name}: section {section!r} has no field {field!r}; "
                                 f"known: {', '.join(hints)}")
            out.setdefault(section, {})[field] = _parse_value(name, text, hints[field])
            continue
        _check_fields([name], source="config override")
        out[name] = _parse_value(name, text)
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
