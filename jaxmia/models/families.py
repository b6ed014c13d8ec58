"""The registry of model families: ``configs/families/<name>.toml`` read into typed, frozen records.

A family states what a checkpoint folder cannot: the reference noise schedule and timestep
convention, the latent scale and how images are encoded, the conditioning, and whether the output
carries a learned variance (docs/methods/cdi.md §9, docs/methods/models.md §6–§8). :func:`load_denoiser`
(``family=...``) uses a family to fill what a folder lacks and refuses any disagreement.

File format (every key required unless marked optional; unknown keys are refused by name)::

    name = "dit"                      # must equal the file name
    description = "..."
    reference = "..."
    checkpoints = ["..."]             # optional: known checkpoints of the family
    learned_sigma = true

    [schedule]                        # keys and meaning of diffusers' scheduler_config.json
    beta_schedule = "linear"          # linear | scaled_linear | squaredcos_cap_v2
    beta_start = 0.0001
    beta_end = 0.02
    num_train_timesteps = 1000
    prediction_type = "epsilon"
    first_index_clean = false         # the timestep convention (U-ViT: true, t = 0 is clean)

    [latent]
    kind = "kl"                       # none | kl (AutoencoderKL) | vq (VQModel)
    encode = "sample"                 # none | sample | mean | pre_quantization | quantized
    scale = 0.18215                   # latent kinds only

    [conditioning]
    kind = "class"                    # none | class | text
    num_classes = 1000                # class only
    null_class = 1000                 # optional, class only
    context_shape = [77, 768]         # text only
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping, Optional

from jaxmia import config as typed
from jaxmia import schedule as sched
from jaxmia.models.denoiser import COND_KINDS

# Shipped inside the package (jaxmia/configs, also reachable as configs/ at the repository root).
FAMILIES_DIR = Path(__file__).resolve().parents[1] / "configs" / "families"

LATENT_KINDS = ("none", "kl", "vq")
# Encode modes per latent kind (jaxmia.models.vae.ENCODE_MODES, by autoencoder class).
ENCODE_MODES = {"none": ("none",), "kl": ("sample", "mean"), "vq": ("pre_quantization", "quantized")}
AUTOENCODER_CLASSES = {"kl": "AutoencoderKL", "vq": "VQModel"}
CONDITIONING_KINDS = COND_KINDS  # what a Denoiser's cond_kind can be


@dataclasses.dataclass(frozen=True)
class FamilySchedule:
    """The reference noise schedule, in diffusers' scheduler-config terms."""

    beta_schedule: str
    beta_start: float
    beta_end: float
    num_train_timesteps: int
    prediction_type: str
    first_index_clean: bool

    def __post_init__(self):
        if self.beta_schedule not in sched.BETA_SCHEDULES:
            raise ValueError(f"schedule.beta_schedule={self.beta_schedule!r} is not one of "
                             f"{', '.join(sched.BETA_SCHEDULES)}")
        if self.prediction_type not in sched.PREDICTION_TYPES:
            raise ValueError(f"schedule.prediction_type={self.prediction_type!r} is not one of "
                             f"{', '.join(sched.PREDICTION_TYPES)}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"schedule.num_train_timesteps={self.num_train_timesteps} must be positive")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"schedule.beta_start={self.beta_start}, beta_end={self.beta_end} must satisfy "
                             "0 < beta_start <= beta_end < 1")

    @property
    def timestep_convention(self) -> str:
        """``first_index_clean`` (ā[0] = 1, U-ViT) or ``standard`` (ā[0] = 1 − β_0)."""
        return "first_index_clean" if self.first_index_clean else "standard"

    def as_scheduler_config(self) -> dict:
        """The scheduler-config keys :func:`jaxmia.schedule.schedule_from_config` reads."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FamilyLatent:
    """The autoencoder's role: ``kind`` none/kl/vq, the encode mode and the latent scale."""

    kind: str
    encode: str
    scale: Optional[float] = None  # required for the latent kinds, refused for "none"

    def __post_init__(self):
        if self.kind not in LATENT_KINDS:
            raise ValueError(f"latent.kind={self.kind!r} is not one of {', '.join(LATENT_KINDS)}")
        if self.encode not in ENCODE_MODES[self.kind]:
            raise ValueError(f"latent.encode={self.encode!r} is not a {self.kind!r} encode mode "
                             f"({', '.join(ENCODE_MODES[self.kind])})")
        if self.kind == "none" and self.scale is not None:
            raise ValueError("unknown key(s) 'latent.scale' (latent kind 'none' has no scale)")
        if self.kind != "none" and self.scale is None:
            raise ValueError("missing key(s) 'latent.scale'")
        if self.scale is not None and not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"latent.scale={self.scale!r} must be a positive number")

    @property
    def autoencoder_class(self) -> Optional[str]:
        return AUTOENCODER_CLASSES.get(self.kind)


@dataclasses.dataclass(frozen=True)
class FamilyConditioning:
    kind: str
    num_classes: Optional[int] = None
    null_class: Optional[int] = None
    context_shape: Optional[tuple[int, int]] = None

    def __post_init__(self):
        if self.kind not in CONDITIONING_KINDS:
            raise ValueError(f"conditioning.kind={self.kind!r} is not one of {', '.join(CONDITIONING_KINDS)}")
        needed = {"none": (), "class": ("num_classes",), "text": ("context_shape",)}[self.kind]
        allowed = {"class": ("num_classes", "null_class"), "text": ("context_shape",)}.get(self.kind, ())
        given = [k for k in ("num_classes", "null_class", "context_shape") if getattr(self, k) is not None]
        extra = [k for k in given if k not in allowed]
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(repr('conditioning.' + k) for k in extra)} "
                             f"(conditioning kind {self.kind!r})")
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(repr('conditioning.' + k) for k in missing)}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"conditioning.num_classes={self.num_classes} must be positive")
        if self.null_class is not None and self.null_class < 0:
            raise ValueError(f"conditioning.null_class={self.null_class} must be >= 0")
        if self.context_shape is not None and min(self.context_shape) < 1:
            raise ValueError(f"conditioning.context_shape={list(self.context_shape)!r} must be [tokens, width] "
                             "(positive integers)")


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family (a ``configs/families/*.toml`` file), typed and frozen."""

    name: str
    description: str
    reference: str
    learned_sigma: bool
    schedule: FamilySchedule
    latent: FamilyLatent
    conditioning: FamilyConditioning
    checkpoints: tuple[str, ...] = ()
    path: str = ""

    @property
    def is_latent(self) -> bool:
        return self.latent.kind != "none"

    def scheduler_config(self) -> dict:
        """A complete scheduler config; ``clip_sample`` (a sampler option, not part of the
        forward process) is on for pixel families and off for latent ones."""
        return {**self.schedule.as_scheduler_config(), "clip_sample": not self.is_latent}

    def make_schedule(self) -> sched.Schedule:
        return sched.schedule_from_config(self.scheduler_config(), source=f"family {self.name!r}")


# ==================================================================================================
# Parsing
# ==================================================================================================

def parse_family(data: Mapping[str, Any], *, source: str = "family") -> Family:
    """Builds a :class:`Family` from a parsed TOML document (:func:`jaxmia.config.from_mapping`);
    every problem is named with ``source``."""
    family = typed.from_mapping(Family, data, source=source, exclude=("path",))
    return dataclasses.replace(family, path=source)


# Families registered from Python (:func:`register_family`), beside the shipped TOML files.
REGISTERED_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Makes ``family`` loadable by name, as a ``configs/families/<name>.toml`` file would (a model
    family defined in code, e.g. with its network's module). A name that a shipped file or an
    earlier registration already uses is refused."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family: expected a Family (see parse_family), got {type(family).__name__}")
    if family.name in REGISTERED_FAMILIES or (FAMILIES_DIR / f"{family.name}.toml").is_file():
        raise ValueError(f"register_family: model family {family.name!r} exists already")
    REGISTERED_FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    if name not in REGISTERED_FAMILIES:
        raise KeyError(f"unregister_family: model family {name!r} is not registered")
    del REGISTERED_FAMILIES[name]


def list_families(directory: Path | None = None) -> list[str]:
    """Names of the families in ``directory`` (default: :data:`FAMILIES_DIR` and the registered ones)."""
    registered = set(REGISTERED_FAMILIES) if directory is None else set()
    directory = Path(directory or FAMILIES_DIR)
    files = {p.stem for p in directory.glob("*.toml")} if directory.is_dir() else set()
    return sorted(files | registered)


def load_family(name_or_path, *, directory: Path | None = None) -> Family:
    """Reads a family by name (a registered one, else ``configs/families/<name>.toml``) or from a
    ``.toml`` path.

    Raises:
      ValueError / FileNotFoundError naming the family or file: an unknown family (the known ones
      are listed), invalid TOML, an unknown, missing or mistyped key, a ``name`` that is not the
      file's name.
    """
    if isinstance(name_or_path, Family):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: family file not found")
    elif directory is None and text in REGISTERED_FAMILIES:
        return REGISTERED_FAMILIES[text]
    else:
        directory = Path(directory or FAMILIES_DIR)
        path = directory / f"{text}.toml"
        if not path.is_file():
            known = list_families(directory)
            where = ", ".join(known) if known else f"none: {directory} has no family files"
            raise ValueError(f"unknown model family {text!r} (known: {where})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    family = parse_family(data, source=str(path))
    if family.name != path.stem:
        raise ValueError(f"{path}: name={family.name!r} does not match the file name {path.stem!r}")
    return family
