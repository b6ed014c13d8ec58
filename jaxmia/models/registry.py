"""The registry of network classes: a diffusers ``_class_name`` -> the builder of its :class:`ModelSpec`.

Registration is explicit (docs/methods/models.md §2): a model module decorates its builder with
``@register_model("ClassName", role=..., module_lists=...)``; :mod:`jaxmia.models.builtin` imports
jaxmia's own model modules once, and a third party registers a class by importing its module. This
module imports no concrete model, so any model module may import it (no import circle).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

MODEL_ROLES = ("denoiser", "autoencoder")


class ModelSpec(NamedTuple):
    """What a network class tells the loader about one config.

    Attributes:
      module: the Flax module.
      config: the class's typed, frozen config.
      abstract_params: the parameter tree as ``jax.ShapeDtypeStruct`` leaves.
      apply_fn: ``(params, x[B,H,W,C], t[B], cond) -> output[B,H,W,C_out]``.
      sample_shape: (H, W, C) of the network input, or None when the config does not say.
      out_channels: channels of the output (C for ε, 2C for ε plus a learned variance).
      cond_kind: ``none``, ``class``, ``text`` or a kind no attack supports (refused by
        :func:`jaxmia.models.loading.load_denoiser`).
    """

    module: Any
    config: Any
    abstract_params: Any
    apply_fn: Callable
    sample_shape: Optional[tuple]
    out_channels: int
    cond_kind: str


class ModelEntry(NamedTuple):
    """One registered class: its builder ``(config_dict, *, source) -> ModelSpec``, its role in a
    pipeline (``denoiser`` or ``autoencoder``) and the PyTorch ``ModuleList`` attribute names of its
    parameter tree (``down_blocks``: ``down_blocks_1`` in Flax is ``down_blocks.1`` in PyTorch,
    :func:`jaxmia.models.convert.torch_key_of`)."""

    class_name: str
    builder: Callable[..., ModelSpec]
    role: str
    module_lists: frozenset


MODEL_REGISTRY: dict[str, ModelEntry] = {}


def register_model(class_name: str, *, role: str = "denoiser", module_lists=()):
    """Registers ``builder(config_dict, *, source) -> ModelSpec`` for a diffusers ``_class_name``.

    Registering a name twice is refused (two modules claiming one class is a bug, not an override).
    """
    if role not in MODEL_ROLES:
        raise ValueError(f"register_model({class_name!r}): role={role!r} is not one of {', '.join(MODEL_ROLES)}")
    lists = frozenset(module_lists)
    if not all(isinstance(name, str) and name for name in lists):
        raise ValueError(f"register_model({class_name!r}): module_lists must be attribute names, got {module_lists!r}")

    def decorate(builder):
        if class_name in MODEL_REGISTRY:
            raise ValueError(f"register_model: model class {class_name!r} is registered already "
                             f"(by {MODEL_REGISTRY[class_name].builder.__module__})")
        MODEL_REGISTRY[class_name] = ModelEntry(class_name, builder, role, lists)
        return builder

    return decorate


def unregister_model(class_name: str) -> None:
    """Removes a registration (tests that register a class of their own clean up with this)."""
    if class_name not in MODEL_REGISTRY:
        raise KeyError(f"unregister_model: model class {class_name!r} is not registered")
    del MODEL_REGISTRY[class_name]


def registered_classes() -> list[str]:
    return sorted(MODEL_REGISTRY)


def model_entry(class_name: str, *, source: str = "config") -> ModelEntry:
    """The entry of ``class_name``; an unknown name is refused, listing the known ones."""
    if class_name not in MODEL_REGISTRY:
        raise ValueError(f"{source}: model class {class_name!r} is not supported "
                         f"(supported: {', '.join(registered_classes())})")
    return MODEL_REGISTRY[class_name]


def build_model(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """Dispatches on ``_class_name``; an absent or unknown class name is refused by name."""
    class_name = config.get("_class_name") if isinstance(config, Mapping) else None
    if class_name is None:
        raise ValueError(f"{source}: no _class_name; expected one of {', '.join(registered_classes())}")
    return model_entry(class_name, source=source).builder(config, source=source)


def model_roles() -> dict[str, str]:
    """Every registered class name -> ``denoiser`` or ``autoencoder`` (for
    :func:`jaxmia.models.layout.resolve_layout`)."""
    return {name: entry.role for name, entry in MODEL_REGISTRY.items()}


def module_lists() -> frozenset:
    """The ``ModuleList`` attribute names of every registered class (and of
    :func:`register_module_lists`), for :func:`jaxmia.models.convert.torch_key_of`."""
    names = set(_EXTRA_MODULE_LISTS)
    for entry in MODEL_REGISTRY.values():
        names |= entry.module_lists
    return frozenset(names)


_EXTRA_MODULE_LISTS: set[str] = set()


def register_module_lists(*names: str) -> None:
    """``ModuleList`` names of a network that is not a registered class (the CLIP text encoder)."""
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"register_module_lists: expected attribute names, got {names!r}")
    _EXTRA_MODULE_LISTS.update(names)
