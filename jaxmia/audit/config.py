"""The audit's typed, locked configuration: TOML files in ``configs/``, overridden by CLI flags.

A config file has up to four sections, each mapped onto one frozen dataclass:

  [audit]     :class:`AuditSettings` (what to run: features, n, seed, batch size, ...)
  [features]  :class:`jaxmia.features.FeatureConfig`, with ``preset = "cdi" | "cdi_reference" | ...``
  [cdi]       :class:`jaxmia.inference.CdiConfig` (scoring model and test)
  [drc]       :class:`jaxmia.drc.DRCConfig` (the DRC evidence run)

An unknown section or field is an error that names it (a typo never becomes a silent default).
Overrides use dotted names: ``--set cdi.permutations=200 --set features.preset=cdi_reference``.
The fully resolved config is written beside every output as ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from jaxmia.drc import DRCConfig
from jaxmia.features import FeatureConfig, make_config
from jaxmia.features.config import SECTION_TYPES
from jaxmia.inference.report import CdiConfig, config_from_dict as cdi_from_dict
from jaxmia.shift.processing import DEFAULT_SENSITIVITY, parse_processing

SECTIONS = ("audit", "features", "cdi", "drc")


@dataclass(frozen=True)
class AuditSettings:
    """What an audit runs.

    Attributes:
      features: feature names for the scoring model (``cdi`` = the 26-d vector).
      n: images per side (P and U); None uses all, paired down to the smaller set.
      seed: root seed of every draw (features, sampling of n, tests).
      batch_size: images per step: the unit of progress and of the resumable partial saves.
      per_device_batch: images each device computes per call (None: jaxmia's default, 16): the
        compiled shape, which fixes the features' float rounding; larger is faster on a GPU/TPU.
      null_splits: innocent splits of U for the empirical false-positive rate (0 disables).
      null_test: the test run on those splits (the cheap, calibrated ``split`` test by default).
      mia_attacks: single-image attack columns evaluated for context, each in the direction its signal
        registered; None: the columns of the feature tables' ``mia`` group (the registry's).
      drc_images: images per side restored for the DRC evidence (0 disables).
      resize, on_error: how image folders are read (see :mod:`jaxmia.data.folder`).
      scheduler: a scheduler config (file or folder) used instead of the model folder's (``--scheduler``).
      family: the model family (``--family``; see :mod:`jaxmia.models.families`).
      duplicates: images with identical pixels within P or within U (they count the same evidence
        twice): ``drop`` all but one of each group, ``refuse``, or ``keep``. Images shared by P and U
        are always refused (:mod:`jaxmia.data.duplicates`).
      captions: a text-conditional model's captions file for P and U (``--captions``; see
        :mod:`jaxmia.data.captions`); None reads each image folder's ``metadata.jsonl`` / ``.csv``.
        Encoded by the model pipeline's tokenizer and text encoder, cached in ``OUT/text_embeddings``.
      drc_embedder: a transformers ``CLIPVisionModel`` / ``CLIPModel`` folder: the DRC stage scores
        by the cosine similarity of CLIP image embeddings (:mod:`jaxmia.models.clip_vision`) as well
        as the pixel metrics, and aggregates that; None: pixel metrics only.
      shift_checks: run the blind baseline (model-free features, the verdict's test) and compare
        P's and U's files; a difference makes the verdict "inconclusive" (:mod:`jaxmia.shift`).
      file_mismatch: P and U files that differ in size, format or JPEG quality: ``warn`` (report it;
        the verdict is inconclusive) or ``refuse`` (stop before any feature is computed).
      sensitivity: processings applied to half of U to see which alone would give a "trained"
        verdict (``name:param``; empty disables); sensitivity_images: images per half.
    """

    features: str = "cdi"
    n: Optional[int] = None
    seed: int = 0
    batch_size: int = 32
    per_device_batch: Optional[int] = None
    null_splits: int = 200
    null_test: str = "split"
    mia_attacks: Optional[tuple] = None
    drc_images: int = 4
    resize: str = "refuse"
    on_error: str = "refuse"
    scheduler: Optional[str] = None
    family: Optional[str] = None
    duplicates: str = "drop"
    captions: Optional[str] = None
    drc_embedder: Optional[str] = None
    shift_checks: bool = True
    file_mismatch: str = "warn"
    sensitivity: tuple = DEFAULT_SENSITIVITY
    sensitivity_images: int = 50

    def __post_init__(self):
        if self.n is not None and self.n < 5:
            raise ValueError(f"audit.n={self.n}: need at least 5 images per side (5 folds)")
        if self.batch_size < 1 or (self.per_device_batch is not None and self.per_device_batch < 1):
            raise ValueError("audit.batch_size and audit.per_device_batch must be >= 1")
        if self.duplicates not in ("drop", "refuse", "keep"):
            raise ValueError(f"audit.duplicates={self.duplicates!r} is not one of drop, refuse, keep")
        if self.null_splits < 0 or self.drc_images < 0:
            raise ValueError("audit.null_splits and audit.drc_images must be >= 0")
        if self.file_mismatch not in ("warn", "refuse"):
            raise ValueError(f"audit.file_mismatch={self.file_mismatch!r} is not one of warn, refuse")
        if self.sensitivity_images < 10:
            raise ValueError(f"audit.sensitivity_images={self.sensitivity_images}: need at least 10")
        object.__setattr__(self, "sensitivity", tuple(str(s) for s in self.sensitivity))
        for spec in self.sensitivity:
            try:
                parse_processing(spec)
            except ValueError as err:
                raise ValueError(f"audit.sensitivity: {err}") from None


@dataclass(frozen=True)
class AuditConfig:
    audit: AuditSettings = field(default_factory=AuditSettings)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    feature_preset: str = "cdi"
    cdi: CdiConfig = field(default_factory=CdiConfig)
    drc: DRCConfig = field(default_factory=DRCConfig)

    def to_dict(self) -> dict:
        return {
            "audit": _plain(dataclasses.asdict(self.audit)),
            "features": {"preset": self.feature_preset, **self.features.to_dict()},
            "cdi": self.cdi.to_dict(),
            "drc": self.drc.to_dict(),
        }


def _plain(d):
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(cls, name: str, value: Any, where: str):
    """Parses CLI text (or TOML lists) into the field's declared type."""
    hint = typing.get_type_hints(cls).get(name)
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else hint
    text = value.strip()
    try:
        if text.lower() in ("none", "null") and type(None) in typing.get_args(hint):
            return None
        if target is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if target is int:
            return int(text)
        if target is float:
            return float(text)
        if target is str or target is object:
            return text
        if target is tuple or typing.get_origin(target) is tuple:
            items = [t.strip() for t in text.split(",") if t.strip()]
            return tuple(_number_or_text(t) for t in items)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a valid {getattr(target, '__name__', target)}") from None
    return text


def _number_or_text(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _check_known(cls, values: Mapping, section: str, source: str, extra: Sequence[str] = ()):
    known = set(_fields(cls)) | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {', '.join(section + '.' + u for u in unknown)}; "
                         f"known in [{section}]: {', '.join(sorted(known))}")


def _section_values(section: str, values: Mapping[str, Any], source: str) -> dict:
    """A signal's own section under [features] (``[features.drc]``), typed like its dataclass."""
    return {k: _coerce(SECTION_TYPES[section], k, v, f"{source}: features.{section}.{k}") for k, v in values.items()}


def build_config(sections: Mapping[str, Mapping[str, Any]], *, source: str = "config") -> AuditConfig:
    """An :class:`AuditConfig` from section dictionaries (file contents merged with overrides)."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {', '.join(map(repr, unknown))}; known: {', '.join(SECTIONS)}")
    audit_vals = dict(sections.get("audit", {}))
    _check_known(AuditSettings, audit_vals, "audit", source)
    audit = AuditSettings(**{k: _coerce(AuditSettings, k, v, f"{source}: audit.{k}") for k, v in audit_vals.items()})

    feat_vals = dict(sections.get("features", {}))
    for key in [k for k in feat_vals if "." in k]:  # --set features.drc.steps=2: a signal's own section
        section, name = key.split(".", 1)
        feat_vals.setdefault(section, {})[name] = feat_vals.pop(key)
    _check_known(FeatureConfig, feat_vals, "features", source, extra=("preset", *SECTION_TYPES))
    preset = str(feat_vals.pop("preset", "cdi"))
    features = make_config(preset, **{k: _section_values(k, v, source) if k in SECTION_TYPES else
                                      _coerce(FeatureConfig, k, v, f"{source}: features.{k}")
                                      for k, v in feat_vals.items()})

    cdi_vals = dict(sections.get("cdi", {}))
    _check_known(CdiConfig, cdi_vals, "cdi", source)
    cdi = cdi_from_dict({k: _coerce(CdiConfig, k, v, f"{source}: cdi.{k}") for k, v in cdi_vals.items()})

    drc_vals = dict(sections.get("drc", {}))
    _check_known(DRCConfig, drc_vals, "drc", source)
    drc = DRCConfig.from_dict({k: _coerce(DRCConfig, k, v, f"{source}: drc.{k}") for k, v in drc_vals.items()})
    return AuditConfig(audit=audit, features=features, feature_preset=preset, cdi=cdi, drc=drc)


def read_config_file(path) -> dict:
    """The sections of a TOML (or JSON: a resolved ``config.json``) config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({err})") from None


def parse_set(items: Sequence[str]) -> dict:
    """``["cdi.permutations=200", ...]`` → ``{"cdi": {"permutations": "200"}}`` (values parsed later)."""
    out: dict = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. cdi.permutations=200")
        key, value = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def load_config(path=None, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> AuditConfig:
    """Config file (optional) + overrides → a resolved :class:`AuditConfig`."""
    sections: dict = {}
    source = "defaults"
    if path is not None:
        sections = {k: dict(v) for k, v in read_config_file(path).items()}
        source = str(path)
    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update(values)
    return build_config(sections, source=source)
