"""PyTorch state dicts (NumPy arrays) ↔ Flax parameter trees, by mechanical rules.

The rules (docs/methods/models.md §4):

* path: split the key on "." and glue each numeric segment to the name before it with "_"
  (``down_blocks.1.attentions.0.to_out.0.weight`` → ``down_blocks_1/attentions_0/to_out_0/...``);
* leaf: a ``weight`` becomes ``kernel`` (conv O,I,H,W → H,W,I,O; linear (out, in) → (in, out); a
  1×1 conv feeding a linear layer is squeezed first), ``scale`` (norms) or ``embedding`` (tables),
  whichever the target module declares; ``bias`` stays ``bias``;
* old attention names (diffusers < 0.14, e.g. the hub ``google/ddpm-cifar10-32`` weights)
  ``query``/``key``/``value``/``proj_attn`` map to ``to_q``/``to_k``/``to_v``/``to_out_0`` when
  the target declares the new names, as diffusers' ``_convert_deprecated_attention_blocks`` does;
* dtype: float16 / bfloat16 / float64 are cast to float32 (the modules compute in float32).

The result is checked against the target's abstract tree (``jax.eval_shape`` of the module's
init): any missing, unexpected or mis-shaped leaf is refused by name.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jaxmia.models import registry

# Old (pre-0.14) attention sub-module names and their modern names.
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}
NEW_TO_OLD_ATTENTION = {v: k for k, v in OLD_ATTENTION_NAMES.items()}


_WEIGHT_LEAVES = ("kernel", "scale", "embedding")
_MAX_LISTED = 5


def flax_module_path(torch_key: str) -> tuple[str, ...]:
    """``a.1.b.0.c.weight`` → ``("a_1", "b_0", "c", "weight")`` (numeric segments glued with "_")."""
    parts: list[str] = []
    for segment in torch_key.split("."):
        if segment.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{segment}"
        else:
            parts.append(segment)
    return tuple(parts)


def torch_key_of(flax_path: tuple[str, ...]) -> str:
    """Inverse of the path rule plus the leaf rule: ``("to_out_0", "kernel")`` → ``to_out.0.weight``.

    ``name_<i>`` becomes ``name.<i>`` when ``name`` is a PyTorch ``ModuleList`` attribute declared by a
    registered class (``register_model(..., module_lists=...)``, :func:`jaxmia.models.registry.module_lists`);
    other names ending in ``_<digit>`` (``time_embedding.linear_1``) are plain attribute names.
    """
    segments = []
    module_lists = registry.module_lists()
    for segment in flax_path[:-1]:
        match = re.fullmatch(r"(.+)_(\d+)", segment)
        if match and match.group(1) in module_lists:
            segments += [match.group(1), match.group(2)]
        else:
            segments.append(segment)
    leaf = flax_path[-1]
    segments.append("weight" if leaf in _WEIGHT_LEAVES else leaf)
    return ".".join(segments)


def _as_float32(name: str, array, source: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise ValueError(f"{source}: weight {name!r} has dtype {array.dtype}, expected a floating-point tensor")
    return array.astype(np.float32)


def _to_flax_leaf(array: np.ndarray, leaf: str, target_ndim: int) -> np.ndarray:
    if leaf != "kernel":
        return array
    if array.ndim == 4 and target_ndim == 2 and array.shape[2:] == (1, 1):  # 1×1 conv used as a linear layer
        array = array[:, :, 0, 0]
    if array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))  # O,I,H,W → H,W,I,O
    if array.ndim == 2:
        return array.T  # (out, in) → (in, out)
    return array


def _describe(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_LISTED])
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"{shown}{more}"


def torch_to_flax(state_dict: Mapping[str, Any], abstract_params: Any, *, source: str = "state dict") -> dict:
    """Converts a PyTorch state dict (name → NumPy array) to the Flax tree shaped like ``abstract_params``.

    Args:
      state_dict: PyTorch parameter names → arrays (any float dtype; NumPy or ml_dtypes bfloat16).
      abstract_params: the target tree, leaves with ``.shape`` (``jax.ShapeDtypeStruct`` or arrays).
      source: the file name used in error messages.

    Returns:
      A nested dict of float32 NumPy arrays with exactly the target's paths and shapes.

    Raises:
      ValueError naming ``source`` and the offending key(s): a weight the model does not declare, a
      weight of the wrong shape, two weights for the same parameter, or a parameter with no weight.
    """
    target = traverse_util.flatten_dict(abstract_params)
    modules = {path[:-1] for path in target}
    out: dict[tuple[str, ...], np.ndarray] = {}
    origin: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for key, value in state_dict.items():
        path = flax_module_path(key)
        module, leaf = path[:-1], path[-1]
        if module not in modules and module and module[-1] in OLD_ATTENTION_NAMES:
            module = module[:-1] + (OLD_ATTENTION_NAMES[module[-1]],)
        candidates = _WEIGHT_LEAVES if leaf == "weight" else (leaf,)
        flax_path = next((module + (name,) for name in candidates if module + (name,) in target), None)
        if flax_path is None:
            problems.append(f"unexpected weight {key!r}")
            continue
        if flax_path in out:
            problems.append(f"weights {origin[flax_path]!r} and {key!r} both map to {'/'.join(flax_path)}")
            continue
        expected = tuple(target[flax_path].shape)
        array = _to_flax_leaf(_as_float32(key, value, source), flax_path[-1], len(expected))
        if tuple(array.shape) != expected:
            problems.append(f"weight {key!r} has shape {tuple(np.shape(value))}, the model expects "
                            f"{expected} for {'/'.join(flax_path)}")
            continue
        out[flax_path] = array
        origin[flax_path] = key
    missing = [path for path in target if path not in out]
    problems += [f"missing weight {torch_key_of(path)!r} (for {'/'.join(path)})" for path in missing]
    if problems:
        raise ValueError(f"{source}: weights do not match the model config: {_describe(problems)}")
    return traverse_util.unflatten_dict(out)


def flax_to_torch(params: Any, *, old_attention_names: bool = False) -> dict[str, np.ndarray]:
    """The inverse of :func:`torch_to_flax`: PyTorch names and layouts, float32 NumPy arrays.

    ``old_attention_names=True`` writes ``query``/``key``/``value``/``proj_attn`` (pre-0.14 files).
    """
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        array = np.asarray(value)
        if path[-1] == "kernel":
            array = np.transpose(array, (3, 2, 0, 1)) if array.ndim == 4 else array.T
        if old_attention_names and len(path) >= 2 and path[-2] in NEW_TO_OLD_ATTENTION:
            path = path[:-2] + (NEW_TO_OLD_ATTENTION[path[-2]], path[-1])
        out[torch_key_of(path)] = np.ascontiguousarray(array)
    return out


def check_params(params: Any, abstract_params: Any, *, source: str = "params") -> dict:
    """Checks a Flax tree against the abstract one and casts half/double precision to float32.

    Raises:
      ValueError naming ``source`` and each missing, unexpected or mis-shaped parameter path.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"{source}: expected a tree of named parameters, got {type(params).__name__}")
    target = traverse_util.flatten_dict(abstract_params)
    given = traverse_util.flatten_dict(params)
    problems = []
    out = {}
    for path, value in given.items():
        name = "/".join(map(str, path))
        if path not in target:
            problems.append(f"unexpected parameter {name!r}")
        elif not hasattr(value, "shape") or tuple(value.shape) != tuple(target[path].shape):
            shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
            problems.append(f"parameter {name!r} has shape {shape}, the model expects {tuple(target[path].shape)}")
        else:
            out[path] = _as_float32(name, value, source)
    problems += [f"missing parameter {'/'.join(path)!r}" for path in target if path not in given]
    if problems:
        raise ValueError(f"{source}: parameters do not match the model config: {_describe(problems)}")
    return traverse_util.unflatten_dict(out)
