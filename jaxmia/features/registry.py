"""The signal registry: everything about a signal, in one registration next to its kernel.

A registration (:func:`register_feature`) states the per-example kernel, the config it reads (fields of
:class:`FeatureConfig` and, optionally, its own config section), its columns (a function of the config),
their direction, its cost in network evaluations, its groups, its timesteps and its help line. Everything
else is derived from the registry: the feature table's column list and metadata (directions, groups,
per-signal config and cost), the groups the CDI scoring model selects by (``mia``, ``new``, ...),
``FeatureConfig.max_timestep``, the presets' signal lists and ``jaxmia signals``. A new attack is one
module with one registration; importing the module registers it.

A kernel is a pure function of ONE example (docs/methods/design.md §2, §8)::

    kernel(denoiser, x0, cond, key: SampleKey, cfg: FeatureConfig, shared: SharedWork) -> {column: scalar}

``extract()`` vmaps the union of the requested kernels over a batch and jits it once per
(features, config, shapes). Kernels that compute the same intermediate (PIA's and SecMI's
ε_θ(x0, 0); GM's gradient pass, which is ML's forward pass when they share the draw) fetch it from
``shared``, a trace-time memo, so one program computes it once.

Columns that cannot be computed per example (``noise_opt`` with ``no_mode="reference"``, which is
batch-coupled by definition) come from an optional host-side ``host_fn`` over the real rows of each
batch.

Every registration states its columns' **direction**: ``"lower"`` (the raw score is smaller for
training members, like a loss), ``"higher"``, or ``"none"`` (a raw feature with no declared
direction, e.g. CDI's gradient-masking vector; the scoring model learns its sign). The direction
travels in the feature table's metadata (``lower_is_member`` / ``higher_is_member``), and an
attack evaluation of a column without one is an error, never a guess. Another producer registers
itself with :func:`register_feature`::

    @dataclasses.dataclass(frozen=True)
    class ToyConfig:              # the signal's own section: FeatureConfig.section("toy"), --set toy.t=10
        t: int = 100

    @register_feature("toy", columns=lambda cfg: ("toy",), direction="higher", section=ToyConfig,
                      work=lambda cfg, req: {"toy": Cost(forward=1)}, groups=("mia",),
                      timesteps=lambda cfg: (cfg.section("toy").t,))
    def toy_kernel(denoiser, x0, cond, key, cfg, shared):  # its docstring's first line: jaxmia signals
        return {"toy": ...}
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Optional, Sequence

from jaxmia.features.config import FIELD_NAMES, SECTION_TYPES, FeatureConfig

DIRECTIONS = ("lower", "higher", "none")

# What the groups of the built-in signals mean (docs/methods/cdi.md §4.9, §8); a registration may name a
# new group (its description is then its name) or describe one with :func:`register_group`.
GROUP_DOCS: dict[str, str] = {
    "mia": "existing MIAs",
    "new": "new features only",
    "gm": "gradient masking",
    "ml": "multiple loss",
    "no": "noise optimisation",
    "drc": "DRC-style degrade-restore-compare",
}


@dataclasses.dataclass(frozen=True)
class Cost:
    """UNet evaluations per image: forward passes, backward passes (vector-Jacobian products).

    ``exact=False`` marks a nominal count: data-dependent line searches may add evaluations (noise
    optimisation counts one line-search evaluation per L-BFGS iteration, the usual case).
    """

    forward: int = 0
    backward: int = 0
    exact: bool = True

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forward + other.forward, self.backward + other.backward, self.exact and other.exact)

    def as_dict(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "exact": self.exact}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One registered signal.

    Attributes:
      kernel: the per-example function (see module docstring).
      columns: ``cfg -> column names``, all of them, in output order (host columns included).
      work: ``(cfg, requested names) -> {work unit: Cost}``. Units with the same name are computed
        once when several signals run together, so a set's cost is the sum over the union of units.
      host_columns: ``cfg -> columns produced by host_fn`` (empty for pure per-example signals).
      host_fn: ``(denoiser, x0[B], cond[B] | None, root, id_hash[B, 2], cfg) -> {column: (B,)}``,
        run on the real (unpadded) rows of each batch.
      parts: the signals a composite (``cdi``) is made of; they share work with each other.
      direction: ``cfg -> {column: "lower" | "higher" | "none"}`` for every column (see the module
        docstring); a composite's is the union of its parts'.
      lane: a :class:`LaneStage` that computes some columns outside the kernel, one evaluation per
        compiled call with finished examples replaced by new ones (``extract()`` runs it); the
        kernel then skips them when ``shared.deferred`` names this signal.
      reads: the :class:`FeatureConfig` fields the signal reads (its part of the flat config).
      section: the signal's own config dataclass (``cfg.section(name)``), or None.
      groups: the groups its columns belong to (``mia``, ``new``, ``gm``, ...; a composite's columns
        keep their parts' groups).
      timesteps: ``cfg -> the timesteps it queries`` (checked against the model's schedule).
      help: one line for ``jaxmia signals`` (default: the kernel docstring's first line).
    """

    name: str
    kernel: Callable
    columns: Callable[[FeatureConfig], tuple]
    work: Callable[[FeatureConfig, frozenset], Mapping[str, Cost]]
    direction: Callable[[FeatureConfig], Mapping[str, str]] = lambda cfg: {}
    host_columns: Callable[[FeatureConfig], tuple] = lambda cfg: ()
    host_fn: Optional[Callable] = None
    parts: tuple = ()
    doc: str = ""
    lane: Optional["LaneStage"] = None
    reads: tuple = ()
    section: Optional[type] = None
    groups: tuple = ()
    timesteps: Callable[[FeatureConfig], tuple] = lambda cfg: ()

    def cost(self, cfg: FeatureConfig) -> Cost:
        """UNet evaluations per image when this signal runs alone."""
        return _total(self.work(cfg, expand_requested([self.name])))

    def directions(self, cfg: FeatureConfig) -> dict[str, str]:
        """Every column's direction; a column the registration leaves out is an error."""
        got = dict(self.direction(cfg))
        missing = [c for c in self.columns(cfg) if c not in got]
        bad = {c: d for c, d in got.items() if d not in DIRECTIONS}
        if missing or bad:
            raise ValueError(f"feature {self.name!r}: direction missing for column(s) {missing} or not one of "
                             f"{', '.join(DIRECTIONS)}: {bad}")
        return got

    def lane_columns(self, cfg: FeatureConfig) -> tuple:
        """Columns of the lane stage (empty without one, or when it does not apply to ``cfg``)."""
        return tuple(self.lane.columns(cfg)) if self.lane is not None else ()

    def device_columns(self, cfg: FeatureConfig, *, lanes: bool = False) -> tuple:
        """Columns of the vmapped kernel program: all but the host's, and with ``lanes`` but the lanes'."""
        other = set(self.host_columns(cfg)) | (set(self.lane_columns(cfg)) if lanes else set())
        return tuple(c for c in self.columns(cfg) if c not in other)


FEATURES: dict[str, FeatureSpec] = {}


def register_feature(
    name: str,
    *,
    columns: Callable[[FeatureConfig], tuple],
    work: Callable[[FeatureConfig, frozenset], Mapping[str, Cost]],
    direction,
    host_columns: Callable[[FeatureConfig], tuple] | None = None,
    host_fn: Callable | None = None,
    parts: Sequence[str] = (),
    lane: "LaneStage | None" = None,
    reads: Sequence[str] = (),
    section: type | None = None,
    groups: Sequence[str] = (),
    timesteps: Callable[[FeatureConfig], Iterable[int]] | None = None,
    help: str | None = None,
):
    """Decorator: registers ``kernel`` under ``name`` (an existing name is an error).

    ``direction`` is one of :data:`DIRECTIONS` for every column, or ``cfg -> {column: direction}``.
    ``reads`` must name :class:`FeatureConfig` fields; ``section`` is a frozen dataclass whose
    defaults form the signal's own config section (``cfg.section(name)``, overridden with
    ``--set name.field=value`` or ``make_config(..., name={...})``). See :class:`FeatureSpec`.
    """
    unknown = [f for f in reads if f not in FIELD_NAMES]
    if unknown:
        raise ValueError(f"feature {name!r}: reads unknown config field(s) {unknown}; known: {', '.join(FIELD_NAMES)}")
    if section is not None and not (dataclasses.is_dataclass(section) and isinstance(section, type)):
        raise TypeError(f"feature {name!r}: section must be a dataclass type, got {section!r}")
    if name in FIELD_NAMES:
        raise ValueError(f"feature {name!r}: the name is a FeatureConfig field; a section cannot share it")
    if isinstance(direction, str):
        if direction not in DIRECTIONS:
            raise ValueError(f"feature {name!r}: direction={direction!r} is not one of {', '.join(DIRECTIONS)}")
        fixed = direction
        direction = lambda cfg: {c: fixed for c in columns(cfg)}  # noqa: E731
    elif not callable(direction):
        raise TypeError(f"feature {name!r}: direction must be a string or cfg -> {{column: direction}}")

    def wrap(kernel):
        if name in FEATURES:
            raise ValueError(f"feature {name!r} is already registered")
        FEATURES[name] = FeatureSpec(
            name=name, kernel=kernel, columns=columns, work=work, direction=direction,
            host_columns=host_columns or (lambda cfg: ()), host_fn=host_fn, parts=tuple(parts), lane=lane,
            doc=help or (kernel.__doc__ or "").strip().split("\n")[0], reads=tuple(reads), section=section,
            groups=tuple(groups), timesteps=timesteps or (lambda cfg: ()),
        )
        if section is not None:
            SECTION_TYPES[name] = section
        return kernel

    return wrap


def register_group(name: str, doc: str) -> None:
    """Describes a group that registrations may name (shown by ``jaxmia signals`` and in reports)."""
    GROUP_DOCS[name] = doc


def get_feature(name: str) -> FeatureSpec:
    try:
        return FEATURES[name]
    except KeyError:
        raise ValueError(f"unknown feature {name!r}; known: {', '.join(sorted(FEATURES))}") from None


def parse_features(features: str | Iterable[str]) -> tuple[str, ...]:
    """``"loss,secmi"`` or ``["loss", "secmi"]`` -> validated names (unknown or repeated: error)."""
    names = [n.strip() for n in (features.split(",") if isinstance(features, str) else features)]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no feature requested")
    for n in names:
        get_feature(n)
    seen = set()
    dup = [n for n in names if n in seen or seen.add(n)]
    if dup:
        raise ValueError(f"feature(s) requested twice: {', '.join(dup)}")
    return tuple(names)


def expand_requested(names: Iterable[str]) -> frozenset:
    """The requested names plus the parts of any composite (``cdi`` -> its seven signals)."""
    out = set()
    for n in names:
        out.add(n)
        out.update(get_feature(n).parts)
    return frozenset(out)


def _total(units: Mapping[str, Cost]) -> Cost:
    total = Cost()
    for c in units.values():
        total = total + c
    return total


def plan_columns(names: Sequence[str], cfg: FeatureConfig) -> tuple[str, ...]:
    """All output columns of a set of signals, in request order; a column produced twice is an error."""
    cols: list[str] = []
    for n in names:
        for c in get_feature(n).columns(cfg):
            if c in cols:
                raise ValueError(f"column {c!r} is produced by more than one requested feature ({', '.join(names)})")
            cols.append(c)
    return tuple(cols)


def plan_directions(names: Sequence[str], cfg: FeatureConfig) -> dict[str, list[str]]:
    """The feature table's direction metadata: ``{"lower_is_member": [...], "higher_is_member": [...]}``."""
    out: dict[str, list[str]] = {"lower_is_member": [], "higher_is_member": []}
    for n in names:
        for column, d in get_feature(n).directions(cfg).items():
            if d != "none":
                out[f"{d}_is_member"].append(column)
    return out


def _leaves(name: str) -> list[str]:
    """A signal itself, or the parts of a composite, in order (the specs that own the columns)."""
    spec = get_feature(name)
    return [p for part in spec.parts for p in _leaves(part)] if spec.parts else [name]


def plan_groups(names: Sequence[str], cfg: FeatureConfig) -> dict[str, list[str]]:
    """``{group: columns}`` of a set of signals, columns in output order: the feature table's ``groups``.

    Holds every group a requested signal (or a composite's part) declares, ``all`` (every column, in
    order) and each requested signal's and part's own name (``grad_mask`` -> its columns) unless a
    group has that name.
    """
    groups: dict[str, list[str]] = {}
    for n in names:
        for leaf in _leaves(n):
            spec = get_feature(leaf)
            for g in spec.groups:
                groups.setdefault(g, []).extend(spec.columns(cfg))
    groups["all"] = list(plan_columns(names, cfg))
    for n in names:
        for signal in dict.fromkeys([n, *_leaves(n)]):
            groups.setdefault(signal, list(get_feature(signal).columns(cfg)))
    return groups


def plan_max_timestep(names: Iterable[str], cfg: FeatureConfig) -> int:
    """The largest timestep the signals ``names`` (and their parts) query; 0 when none does."""
    steps = [int(t) for n in expand_requested(names) for t in get_feature(n).timesteps(cfg)]
    return max(steps, default=0)


def plan_config(names: Sequence[str], cfg: FeatureConfig) -> FeatureConfig:
    """``cfg`` with the default section of every requested signal that has one and is not set yet.

    The resolved config (the table's ``config``) then records every value the run used.
    """
    missing = {n: get_feature(n).section() for n in sorted(expand_requested(names))
               if get_feature(n).section is not None and n not in dict(cfg.sections)}
    return cfg.with_sections(**missing) if missing else cfg


def plan_signals(names: Sequence[str], cfg: FeatureConfig) -> dict[str, dict]:
    """The feature table's per-signal metadata: columns, groups, the config it read, cost, help."""
    out = {}
    for n in names:
        for leaf in dict.fromkeys([n, *_leaves(n)]):
            spec = get_feature(leaf)
            config = {f: cfg.to_dict()[f] for f in spec.reads}
            if spec.section is not None:
                config[leaf] = cfg.to_dict().get(leaf, dataclasses.asdict(cfg.section(leaf)))
            out[leaf] = {"columns": list(spec.columns(cfg)), "groups": list(spec.groups), "parts": list(spec.parts),
                         "config": config, "cost": spec.cost(cfg).as_dict(), "help": spec.doc}
    return out


def plan_work(names: Sequence[str], cfg: FeatureConfig) -> dict[str, Cost]:
    """The union of work units of a set of signals (shared units counted once)."""
    requested = expand_requested(names)
    units: dict[str, Cost] = {}
    for n in names:
        units.update(get_feature(n).work(cfg, requested))
    return units


def plan_cost(names: Sequence[str], cfg: FeatureConfig) -> Cost:
    """UNet evaluations per image of a set of signals run together, with shared work counted once."""
    return _total(plan_work(names, cfg))


class SharedWork:
    """Trace-time memo of per-example intermediates that several signals compute identically.

    It lives for one trace of one per-example function: ``get(name, compute)`` returns the traced
    value computed the first time, so XLA sees the computation once. ``requested`` tells a signal
    which others run beside it (ML reads GM's forward passes only when GM runs too); ``deferred``
    names the signals whose lane stage produces their columns outside this program.
    """

    def __init__(self, requested: Iterable[str], deferred: Iterable[str] = ()):
        self.requested = expand_requested(requested)
        self.deferred = frozenset(deferred)
        self._memo: dict = {}

    def get(self, name: str, compute: Callable):
        if name not in self._memo:
            self._memo[name] = compute()
        return self._memo[name]


@dataclasses.dataclass(frozen=True)
class LaneStage:
    """A per-example iterative signal run as a state machine, one evaluation per step (noise optimisation).

    Each example is a *lane*: ``init`` builds its state, ``step`` makes one model evaluation and
    updates it, ``running`` says whether it wants another, ``outputs`` reads its columns, ``evals``
    counts the evaluations it has made. All are pure functions of ONE example (vmapped by the
    driver, :mod:`jaxmia.features.lanes`), so a lane's result never depends on the other lanes of a
    call: the driver can refill a finished lane's slot with a new example between calls instead of
    waiting for the slowest one.

    Attributes:
      columns: ``cfg -> columns produced by the lanes`` (empty: the signal runs in its kernel).
      init: ``(denoiser, x0, cond, key: SampleKey, cfg) -> state``.
      step: ``(denoiser, state, cfg) -> state``.
      running: ``(state, cfg) -> bool``.
      outputs: ``(state, cfg) -> {column: scalar}``.
      evals: ``state -> int32`` (model evaluations, each one forward and one backward pass).
    """

    columns: Callable[[FeatureConfig], tuple]
    init: Callable
    step: Callable
    running: Callable
    outputs: Callable
    evals: Callable
