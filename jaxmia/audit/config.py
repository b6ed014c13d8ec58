"""The audit's typed, locked configuration: TOML files in ``configs/``, overridden by CLI flags.

A config file has up to four sections, each mapped onto one frozen dataclass:

  [audit]     :class:`AuditSettings` (what to run: features, n, seed, batch size, ...)
  [features]  :class:`jaxmia.features.FeatureConfig`, with ``preset = "cdi" | "cdi_reference" | ...``
  [cdi]       :class:`jaxmia.inference.CdiConfig` (scoring model and test)
  [drc]       :class:`jaxmia.drc.DRCConfig` (the DRC evidence run)

An unknown section or field is an error that names it (a typo never becomes a silent default).
Overrides use dotted names: ``--set cdi.permutations=200 --set features.preset=cdi_reference``.
Every section is parsed by :func:`jaxmia.config.from_mapping`; the fully resolved config is written
beside every output as ``config.json`` (:func:`jaxmia.config.write_config_json`).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from jaxmia import config as typed
from jaxmia.config import parse_set  # noqa: F401  (the one --set syntax; re-exported for callers)
from jaxmia.drc import DRCConfig
from jaxmia.features import FeatureConfig, make_config
from jaxmia.inference.report import CdiConfig
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
    mia_attacks: Optional[tuple[str, ...]] = None
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
    sensitivity: tuple[str, ...] = DEFAULT_SENSITIVITY
    sensitivity_images: int = 50

    def __post_init__(self):
        typed.coerce_fields(self, source="audit")  # the one parser (jaxmia.config)
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
            "audit": typed.to_mapping(self.audit),
            "features": {"preset": self.feature_preset, **self.features.to_dict()},
            "cdi": self.cdi.to_dict(),
            "drc": self.drc.to_dict(),
        }


def build_config(sections: Mapping[str, Mapping[str, Any]], *, source: str = "config") -> AuditConfig:
    """An :class:`AuditConfig` from section dictionaries (file contents merged with overrides), each
    section parsed by :func:`jaxmia.config.from_mapping` (``features.preset`` picks the base preset)."""
    typed.check_keys(sections, SECTIONS, source=source, what="section")
    audit = typed.from_mapping(AuditSettings, sections.get("audit", {}), source=source, prefix="audit.")
    feat_vals = dict(sections.get("features", {}))
    preset = typed.coerce(feat_vals.pop("preset", "cdi"), str, path="features.preset", source=source)
    # flat fields and each signal's own section ([features.drc], --set features.drc.steps=2), one parser
    features = typed.apply_overrides(make_config(preset), feat_vals, source=source, what="feature config",
                                     prefix="features.")
    cdi = typed.from_mapping(CdiConfig, sections.get("cdi", {}), source=source, prefix="cdi.")
    drc = typed.from_mapping(DRCConfig, sections.get("drc", {}), source=source, prefix="drc.")
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


def load_config(path=None, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> AuditConfig:
    """Config file (optional) + overrides → a resolved :class:`AuditConfig`."""
    sections: dict = {}
    source = "defaults"
    if path is not None:
        sections = {k: dict(v) for k, v in read_config_file(path).items()}
        source = str(path)
    if overrides:
        sections = typed.merge(sections, overrides)
        source = "overrides" if path is None else f"{path} + overrides"
    return build_config(sections, source=source)
