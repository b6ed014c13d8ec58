"""Where the parts of a model live: the denoiser, its autoencoder and its scheduler config.

Folders as people save them (docs/methods/models.md §3):

* a **pipeline folder**: ``model_index.json`` names the components (``{"unet": ["diffusers",
  "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"], ...}``) under whatever names it
  likes; the denoiser is the component whose class is a registered network, the autoencoder the
  one whose class is ``AutoencoderKL``/``VQModel``, the scheduler the one whose class ends in
  ``Scheduler``. Without ``model_index.json``, the conventional folders ``unet/``,
  ``transformer/``, ``vae/``, ``vqvae/`` and ``scheduler/`` are recognised by their own
  ``config.json`` ``_class_name`` (and ``scheduler_config.json``);
* a **model folder** (``config.json`` + weights, e.g. ``unet.save_pretrained(d)``), with its
  scheduler config beside ``config.json``, in a ``scheduler/`` folder inside it, or in
  ``../scheduler/`` (the model folder of a pipeline);
* ``"demo"`` / ``"rgb"``: the bundled targets (:data:`BUNDLED_TARGETS`).

An explicit scheduler (``--scheduler PATH``: a ``scheduler_config.json`` or a folder holding one)
overrides whatever the folder holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Optional

from jaxmia.fileio import read_json

CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
MODEL_INDEX_NAME = "model_index.json"
# Component folders recognised without a model_index.json (diffusers' own names). With an index,
# the index's names are used, whatever they are.
CONVENTIONAL_COMPONENTS = ("unet", "transformer", "vae", "vqvae", "scheduler")
DEMO_TARGET = Path(__file__).resolve().parent.parent / "assets" / "demo_target"
RGB_TARGET = Path(__file__).resolve().parent.parent / "assets" / "rgb_target"
# The targets shipped in jaxmia/assets, loadable by name (jaxmia.targets trains them).
BUNDLED_TARGETS = {"demo": DEMO_TARGET, "rgb": RGB_TARGET}

# What a flag can fix, named in every error it can fix (the Python keywords are the same words).
SCHEDULER_HINT = ("give one with --scheduler PATH (a scheduler_config.json or a folder holding one) or name the "
                  "model family with --family NAME (Python: scheduler=... / family=...)")


class ModelLayout(NamedTuple):
    """Where the parts of one model live.

    Attributes:
      root: the folder the user named.
      kind: ``pipeline`` or ``model folder``.
      model_dir: the denoiser's model folder.
      encoder_dir: the autoencoder's model folder (latent pipelines), else None.
      scheduler_config: the scheduler config file that will be used, or None if none was found.
      scheduler_searched: every place looked at, in order (for messages).
      scheduler_source: how the scheduler config was found (``--scheduler``, ``pipeline component
        'scheduler'``, ``beside config.json``, ...).
    """

    root: Path
    kind: str
    model_dir: Path
    encoder_dir: Optional[Path]
    scheduler_config: Optional[Path]
    scheduler_searched: tuple
    scheduler_source: str


def _scheduler_file(path: Path, *, what: str) -> Path:
    """A scheduler config given explicitly: the file itself or ``<folder>/scheduler_config.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / SCHEDULER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found (expected a {SCHEDULER_CONFIG_NAME} or a folder holding one)")
    return path


def _components(root: Path, index: Optional[dict]) -> dict[str, str]:
    """Component name -> class name: from ``model_index.json`` when present, else from the subfolders."""
    if index is not None:
        out = {}
        for name, value in index.items():
            if name.startswith("_"):
                continue
            # diffusers writes [library, class]; [null, null] marks an optional component left out
            if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], str):
                out[name] = value[1]
        return out
    out = {}
    for sub in (root / name for name in CONVENTIONAL_COMPONENTS):
        if not sub.is_dir():
            continue
        if (sub / CONFIG_NAME).is_file():
            cls = read_json(sub / CONFIG_NAME, what="model config").get("_class_name")
            if isinstance(cls, str):
                out[sub.name] = cls
        elif (sub / SCHEDULER_CONFIG_NAME).is_file():
            out[sub.name] = str(read_json(sub / SCHEDULER_CONFIG_NAME, what="scheduler config").get("_class_name",
                                                                                                   "Scheduler"))
    return out


def _autoencoder_siblings(root: Path, roles: Mapping[str, str]) -> list[str]:
    """Autoencoder folders beside a model folder that sits inside a pipeline (unet/ beside vae/)."""
    parent = root.parent
    if not ((parent / MODEL_INDEX_NAME).is_file() or root.name in ("unet", "transformer")):
        return []
    out = []
    for sub in sorted(p for p in parent.iterdir() if p.is_dir() and p != root and (p / CONFIG_NAME).is_file()):
        try:
            cls = read_json(sub / CONFIG_NAME, what="model config").get("_class_name")
        except ValueError:
            continue  # not ours to judge: only a readable autoencoder config matters here
        if roles.get(cls) == "autoencoder":
            out.append(sub.name)
    return out


def resolve_layout(path, *, roles: Mapping[str, str], scheduler=None) -> ModelLayout:
    """The :class:`ModelLayout` of a pipeline folder, a model folder or a bundled target's name.

    Args:
      path: the folder (or ``"demo"`` / ``"rgb"``, :data:`BUNDLED_TARGETS`).
      roles: class name -> ``"denoiser"`` or ``"autoencoder"`` for every class jaxmia can load.
      scheduler: an explicit scheduler config (file or folder); overrides the folder's.

    Raises:
      FileNotFoundError / ValueError with one line naming the folder, the component and its class.
    """
    if isinstance(path, str) and path in BUNDLED_TARGETS:
        name, path = path, BUNDLED_TARGETS[path]
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: the bundled {name} target is missing from this installation")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: model path not found (expected a pipeline or model folder, or a bundled "
                                f"target: {', '.join(BUNDLED_TARGETS)})")
    explicit = None if scheduler is None else _scheduler_file(scheduler, what="--scheduler file")

    index_path = root / MODEL_INDEX_NAME
    index = read_json(index_path, what="pipeline index") if index_path.is_file() else None
    components = _components(root, index)
    denoisers = [n for n, c in components.items() if roles.get(c) == "denoiser"]
    encoders = [n for n, c in components.items() if roles.get(c) == "autoencoder"]
    schedulers = [n for n, c in components.items() if c.endswith("Scheduler") or c == "Scheduler"]
    is_pipeline = index is not None or bool(denoisers) or bool(encoders)

    if not is_pipeline:
        if not (root / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{root}: neither a pipeline folder ({MODEL_INDEX_NAME}, or component folders "
                                    f"such as unet/ or transformer/) nor a model folder ({CONFIG_NAME} + weights)")
        siblings = _autoencoder_siblings(root, roles)
        if siblings:
            raise ValueError(f"{root}: the denoiser of a latent pipeline (beside {siblings[0]}/); load the pipeline "
                             f"folder {root.parent} instead")
        candidates = [(root / SCHEDULER_CONFIG_NAME, "beside config.json"),
                      (root / "scheduler" / SCHEDULER_CONFIG_NAME, "scheduler/ inside the model folder"),
                      (root.parent / "scheduler" / SCHEDULER_CONFIG_NAME, "../scheduler/ beside the model folder")]
        return _with_scheduler(root, "model folder", root, None, candidates, explicit)

    where = index_path.name if index is not None else "its subfolders"
    if not denoisers:
        listed = ", ".join(f"{n}={c}" for n, c in components.items()) or "none"
        known = ", ".join(sorted(c for c, r in roles.items() if r == "denoiser"))
        raise ValueError(f"{root}: {where} declares no denoiser jaxmia can load (components: {listed}; supported "
                         f"denoiser classes: {known})")
    if len(denoisers) > 1:
        raise ValueError(f"{root}: {where} declares two denoisers ({', '.join(map(repr, denoisers))}); keep one")
    if len(encoders) > 1:
        raise ValueError(f"{root}: {where} declares two autoencoders ({', '.join(map(repr, encoders))}); keep one")
    model_dir = root / denoisers[0]
    if not (model_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{model_dir}: the pipeline's {denoisers[0]!r} component ({components[denoisers[0]]}) "
                                f"is missing or has no {CONFIG_NAME}")
    encoder_dir = root / encoders[0] if encoders else None
    if encoder_dir is not None and not (encoder_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{encoder_dir}: the pipeline's {encoders[0]!r} component ({components[encoders[0]]}) "
                                f"is missing or has no {CONFIG_NAME}")
    candidates = [(root / n / SCHEDULER_CONFIG_NAME, f"pipeline component {n!r}") for n in schedulers]
    if "scheduler" not in schedulers:
        candidates.append((root / "scheduler" / SCHEDULER_CONFIG_NAME, "pipeline folder scheduler/"))
    candidates += [(root / SCHEDULER_CONFIG_NAME, "the pipeline root"),
                   (model_dir / SCHEDULER_CONFIG_NAME, f"beside {denoisers[0]}/config.json")]
    return _with_scheduler(root, "pipeline", model_dir, encoder_dir, candidates, explicit)


def _with_scheduler(root, kind, model_dir, encoder_dir, candidates, explicit) -> ModelLayout:
    searched = tuple(p for p, _ in candidates)
    if explicit is not None:
        return ModelLayout(root, kind, model_dir, encoder_dir, explicit, searched, "--scheduler")
    for path, how in candidates:
        if path.is_file():
            return ModelLayout(root, kind, model_dir, encoder_dir, path, searched, how)
    return ModelLayout(root, kind, model_dir, encoder_dir, None, searched, "none found")
