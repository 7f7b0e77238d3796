"""Search spaces over repetition schemes: one declarative definition, three uses.

A :class:`SearchSpace` names a base family (``vgg``, ``resnet`` or ``wrn``), reference base widths
per stage and the repetition *knobs* (see :data:`KNOB_DEFAULTS`):

* ``depth.<s>``      conv layers (vgg) or basic blocks (resnet) of stage s; ``depth`` for wrn (blocks
                     per stage, the same in every stage as ``wrn(depth, widths)`` wants);
* ``width_rep.<s>``  width repetition factor: the stage's physical width is its source width times
                     this (intra repetition, PAPER.md); 1 = a plain stage;
* ``share.<s>``      how the layers of a stage get their weights: ``own`` (each its own source),
                     ``borrow`` (all tile the stage's anchor layer: inter repetition) or ``bank``
                     (all mix one shared rank-``rank`` template bank);
* ``rank``           mixing rank R of the banks; ``bank_scope`` ``stage`` (one bank per stage) or
                     ``network`` (one bank for every ``bank`` stage);
* ``map``            tile scalar map (``swish`` | ``linear`` | ``none``); ``scalar_init``;
* ``remainder``, ``source_init``, ``bias_init``: the plan options of docs/method.md (the authors'
                     choice by default: ``paper``, ``small_xavier``, ``zeros``).

The same definition gives Optuna distributions (:meth:`SearchSpace.distributions`), a Ray Tune
``param_space`` (:meth:`SearchSpace.to_ray`) and, for a sampled point and a parameter budget, a
deterministic model config (:meth:`SearchSpace.to_model_config`): the budget solver
(``_budget.py``) picks the source widths, so every candidate uses (almost) the whole budget.

Which layers share, and the paper's own designs as points (RepVGG-N, RepWRN-16-k):

* ``lender.<s>.<j>`` cross-layer borrowing: conv j of stage s tiles an earlier conv ``"s'.j'"``
                     of the same or an earlier stage (``none``: the stage's share rule);
                     ``lender: {per_conv: true}`` makes one knob per conv (``_lenders.py``);
* ``widen``          with ``shape: fixed`` only: physical widths are ``widths`` times this (WRN's k);
* ``full_source``    a conv whose owned source is as large as the conv: ``plain`` (left out of the
                     plan: an ordinary conv, as RepVGG's owners) or ``own`` (an untiled own source,
                     initialised by the plan's source init, as the authors' RepWRN-16-1).

Two shape modes. ``shape: solved`` (default): ``widths`` are reference *source* widths and the
solver scales them to fill the budget (physical = source x width_rep). ``shape: fixed``: ``widths``
(times ``widen``) are the *physical* widths, e.g. VGG11's, and the solver only decides how large the
sources of the convs that own weights are (never larger than the conv: a budget that fits the
plain convs gives plain convs). ``plan_options`` are plan-level RepetitionPlan keys for every plan
(``like: rep_vgg6`` copies a family's); a knob the YAML leaves unset takes its value from them
before :data:`KNOB_DEFAULTS`, so a space point rebuilds the family exactly.

Space YAML (built-ins live in ``spaces/builtin/``)::

    name: quick
    family: vgg               # vgg | resnet | wrn
    widths: [8, 16]           # reference source widths per stage (the solver rescales them)
    budget: 12k               # default parameter budget (k / M suffixes allowed), or a range 4k:40k
                              # or levels 4k,12k,40k searched as a dimension (``_budget_spec``)
    dataset: digits           # default dataset
    epochs: 4                 # default epochs per trial
    recipe: {lr: 0.05}        # optional overrides of the trainer's recipe
    knobs:
      depth: {low: 1, high: 2, per_stage: true}     # int range
      width_rep: {choices: [1, 2], per_stage: true} # categorical
      map: linear                                   # a plain value: fixed, not searched
"""

from __future__ import annotations

import difflib
import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from repnas.errors import UserError
from repnas.spaces._budget_spec import parse_budget, parse_count

if TYPE_CHECKING:
    from repnas.spaces._datasets_info import DatasetInfo

FAMILIES = ("vgg", "resnet", "wrn")
SHARE_MODES = ("own", "borrow", "bank")

#: knob name -> (default value, whether it exists once per stage).
KNOB_DEFAULTS: dict[str, tuple[Any, bool]] = {
    "depth": (2, True),
    "width_rep": (1, True),
    "share": ("own", True),
    "lender": ("none", False),
    "widen": (1, False),
    "full_source": ("plain", False),
    "rank": (1, False),
    "bank_scope": ("stage", False),
    "map": ("swish", False),
    "scalar_init": ("xavier", False),
    "remainder": ("paper", False),
    "source_init": ("small_xavier", False),
    "bias_init": ("zeros", False),
}
_SPACE_KEYS = {"name", "description", "family", "widths", "budget", "dataset", "epochs", "recipe", "knobs",
               "min_width", "shape", "plan_options"}
SHAPE_MODES = ("solved", "fixed")
#: space key -> the SearchSpace subclass a definition with that key is (``model`` -> ModelSpace);
#: subclasses register here (:func:`register_space_kind`), so this module imports none of them
_SPACE_KINDS: dict[str, type] = {}


def register_space_kind(key: str, cls: type) -> None:
    """Make ``SearchSpace.from_dict`` build ``cls`` for a definition that has ``key``."""
    _SPACE_KINDS[key] = cls


@dataclass(frozen=True)
class Knob:
    """One searched dimension: categorical ``choices`` or an int/float range ``[low, high]``."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: int | None = None
    log: bool = False

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def to_optuna(self):
        """The fixed ``optuna.distributions`` object of this knob."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.is_int:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_ray(self):
        """The Ray Tune sampling domain of this knob (``ray.tune`` imported lazily)."""
        from ray import tune

        if self.choices is not None:
            return tune.choice(list(self.choices))
        if self.is_int:
            if self.log:
                return tune.lograndint(int(self.low), int(self.high) + 1)
            return tune.qrandint(int(self.low), int(self.high), self.step or 1)
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)

    def grid(self) -> list[Any] | None:
        """All values of a discrete knob (None for a float range)."""
        if self.choices is not None:
            return list(self.choices)
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        return None

    def sample(self, rng: random.Random) -> Any:
        if self.choices is not None:
            return rng.choice(self.choices)
        if self.is_int:  # the same draw as rng.choice(self.grid()), without listing a huge range
            return rng.randrange(int(self.low), int(self.high) + 1, self.step or 1)
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out

    @classmethod
    def from_spec(cls, name: str, spec: Any, where: str) -> Knob:
        if not isinstance(spec, dict):
            raise UserError(f"{where}: knob {name!r} must be a value or {{choices: [...]}} / {{low, high}}")
        unknown = set(spec) - {"choices", "low", "high", "step", "log", "per_stage"}
        if unknown:
            raise UserError(f"{where}: knob {name!r} has unknown keys {sorted(unknown)}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{where}: knob {name!r}: choices must be a non-empty list")
            if not all(isinstance(c, (bool, int, float, str)) for c in choices):
                raise UserError(f"{where}: knob {name!r}: choices must be numbers or strings")
            return cls(name, choices=tuple(choices))
        low, high = spec.get("low"), spec.get("high")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or low > high:
            raise UserError(f"{where}: knob {name!r} needs choices or numbers low <= high, got {spec}")
        step = spec.get("step")
        if step is not None and (not isinstance(step, int) or step < 1):
            raise UserError(f"{where}: knob {name!r}: step must be a positive int")
        return cls(name, low=low, high=high, step=step, log=bool(spec.get("log", False)))


@dataclass(frozen=True)
class Architecture:
    """A sampled point with every knob resolved (defaults filled in): what the builder reads."""

    depths: tuple[int, ...]
    width_reps: tuple[int, ...]
    shares: tuple[str, ...]
    #: (borrower slot, lender slot) pairs of the ``lender.<s>.<j>`` knobs that name a lender.
    lenders: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = ()
    widen: int = 1
    full_source: str = "plain"
    rank: int = 1
    bank_scope: str = "stage"
    map: str = "swish"
    scalar_init: str = "xavier"
    remainder: str = "paper"
    source_init: str = "small_xavier"
    bias_init: str = "zeros"

    def plan_header(self) -> dict[str, Any]:
        """The plan-wide part of this architecture's RepetitionPlan dict (version 2)."""
        return {"version": 2, "map": self.map, "scalar_init": self.scalar_init, "remainder": self.remainder,
                "source_init": self.source_init, "bias_init": self.bias_init}


@dataclass
class SearchSpace:
    """A declarative space over repetition schemes of one base family (see module docstring)."""

    name: str
    family: str
    widths: tuple[int, ...]
    knobs: dict[str, Knob] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    budget: int | str = 100_000  # one count, or a range / levels (``_budget_spec``) searched as a dimension
    dataset: str = "digits"
    epochs: int = 5
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    min_width: int = 2
    shape: str = "solved"
    plan_options: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- definition
    @property
    def num_stages(self) -> int:
        return len(self.widths)

    def distributions(self) -> dict[str, Any]:
        """``{knob: optuna distribution}``: fixed for the space, so samplers see a static space."""
        return {name: knob.to_optuna() for name, knob in self.knobs.items()}

    def to_ray(self) -> dict[str, Any]:
        """A Ray Tune ``param_space`` over the same knobs."""
        return {name: knob.to_ray() for name, knob in self.knobs.items()}

    def sample(self, rng: random.Random | int | None = None) -> dict[str, Any]:
        """A random point of the space (``rng``: a ``random.Random`` or a seed)."""
        rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        return {name: knob.sample(rng) for name, knob in self.knobs.items()}

    def grid_size(self) -> float:
        size = 1.0
        for knob in self.knobs.values():
            if knob.choices is not None:
                size *= len(knob.choices)
            elif knob.is_int:  # counted, not enumerated: a range may be huge
                size *= (int(knob.high) - int(knob.low)) // (knob.step or 1) + 1
            else:
                size = math.inf
        return size

    def point_values(self, point: dict[str, Any]) -> dict[str, Any]:
        """``point`` (exactly the searched knobs, else ``UserError``) plus the space's fixed values."""
        unknown = set(point) - set(self.knobs)
        if unknown:
            raise UserError(f"space {self.name!r}: point has unknown knobs {sorted(unknown)}")
        missing = set(self.knobs) - set(point)
        if missing:
            raise UserError(f"space {self.name!r}: point lacks knobs {sorted(missing)}")
        return {**self.fixed, **point}

    def architecture(self, point: dict[str, Any]) -> Architecture:
        """Resolve a point (searched knobs) plus the fixed values and defaults into an Architecture."""
        values = self.point_values(point)

        def get(name: str, stage: int | None = None) -> Any:
            if stage is not None and f"{name}.{stage}" in values:
                return values[f"{name}.{stage}"]
            if name in values:
                return values[name]
            if name in self.plan_options:  # e.g. a family's map when the space does not search it
                return self.plan_options[name]
            return KNOB_DEFAULTS[name][0]

        stages = range(self.num_stages)
        arch = Architecture(
            depths=tuple(int(get("depth", s)) for s in stages),
            width_reps=tuple(int(get("width_rep", s)) for s in stages),
            shares=tuple(str(get("share", s)) for s in stages),
            lenders=_lenders_of(values, f"space {self.name!r}"),
            widen=int(get("widen")),
            full_source=str(get("full_source")),
            rank=int(get("rank")),
            bank_scope=str(get("bank_scope")),
            map=str(get("map")),
            scalar_init=str(get("scalar_init")),
            remainder=str(get("remainder")),
            source_init=str(get("source_init")),
            bias_init=str(get("bias_init")),
        )
        _check_architecture(arch, self.name)
        _check_shape_mode(arch, self)
        return arch

    def physical_widths(self, arch: Architecture, source_widths: tuple[int, ...]) -> tuple[int, ...]:
        """Channels per stage: given (``shape: fixed``) or source widths times ``width_rep``."""
        if self.shape == "fixed":
            return tuple(w * arch.widen for w in self.widths)
        return tuple(w * r for w, r in zip(source_widths, arch.width_reps, strict=True))

    # ----------------------------------------------------------------- model configs
    def model_config(self, arch: Architecture, source_widths: tuple[int, ...], in_channels: int) -> dict:
        """The ModelConfig (base + kwargs + plan) for given source widths: no budget involved."""
        from repnas.spaces._budget import plan_for

        physical = self.physical_widths(arch, source_widths)
        if self.family == "vgg":
            cfg: list[Any] = []
            for width, depth in zip(physical, arch.depths, strict=True):
                cfg += [width] * depth + ["M"]
            base, kwargs = "vgg", {"cfg": cfg}
        elif self.family == "resnet":
            base, kwargs = "cifar_resnet", {"blocks": list(arch.depths), "widths": list(physical)}
        else:  # wrn: the same number of blocks in every stage
            base, kwargs = "wrn", {"depth": 6 * arch.depths[0] + 4, "widths": list(physical)}
        config = {"base": base, "kwargs": kwargs}
        config["plan"] = plan_for(self, arch, tuple(source_widths), config, in_channels)
        return config

    def to_model_config(self, point: dict[str, Any], budget: int | str | None = None,
                        dataset: str | DatasetInfo | None = None) -> dict:
        """The ModelConfig of ``point`` with source widths solved for ``budget`` (deterministic).

        Raises :class:`~repnas.spaces._budget.InfeasibleError` when even the smallest widths
        exceed the budget.
        """
        return self.solve(point, budget, dataset).model_config

    def solve(self, point: dict[str, Any], budget: int | str | None = None, dataset: str | DatasetInfo | None = None):
        """The budget solver's full answer (:class:`~repnas.spaces._budget.Solution`) for ``point``."""
        from repnas.spaces._budget import solve_point

        return solve_point(self, point, parse_count(budget if budget is not None else self.budget),
                           dataset or self.dataset)

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        knobs: dict[str, Any] = dict(self.fixed)
        per_stage: dict[str, dict[str, Any]] = {}
        for name, knob in self.knobs.items():
            base, _, stage = name.partition(".")
            if stage and KNOB_DEFAULTS.get(base, (None, False))[1]:
                per_stage.setdefault(base, {})[stage] = knob
            else:
                knobs[name] = knob.to_dict()
        for base, by_stage in per_stage.items():
            specs = [k.to_dict() for k in by_stage.values()]
            if len(by_stage) == self.num_stages and all(s == specs[0] for s in specs):
                knobs[base] = {**specs[0], "per_stage": True}
            else:
                for stage, knob in by_stage.items():
                    knobs[f"{base}.{stage}"] = knob.to_dict()
        out = {"name": self.name, "description": self.description, "family": self.family,
               "widths": list(self.widths), "budget": self.budget, "dataset": self.dataset,
               "epochs": self.epochs, "min_width": self.min_width, "knobs": knobs}
        if self.shape != "solved":
            out["shape"] = self.shape
        if self.plan_options:
            out["plan_options"] = dict(self.plan_options)
        if self.recipe:
            out["recipe"] = dict(self.recipe)
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any, where: str = "space") -> SearchSpace:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
        kind = next((k for k in _SPACE_KINDS if k in data), None)
        if kind is not None and cls is SearchSpace:  # e.g. ``model:`` instead of a family (_model_space)
            return _SPACE_KINDS[kind].from_dict(data, where)
        unknown = set(data) - _SPACE_KEYS
        if unknown:
            raise UserError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_SPACE_KEYS)}")
        family = data.get("family")
        if family not in FAMILIES:
            raise UserError(f"{where}: unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
        widths = data.get("widths")
        if not (isinstance(widths, list) and widths and all(isinstance(w, int) and w > 0 for w in widths)):
            raise UserError(f"{where}: widths must be a non-empty list of positive ints, got {widths!r}")
        knobs: dict[str, Knob] = {}
        fixed: dict[str, Any] = {}
        raw_knobs = data.get("knobs") or {}
        if not isinstance(raw_knobs, dict):
            raise UserError(f"{where}: knobs must be a mapping")
        lender_spec = raw_knobs.get("lender")
        for name, spec in raw_knobs.items():
            base, _, stage = str(name).partition(".")
            if base == "lender":
                _parse_lender_knob(str(name), spec, len(widths), knobs, fixed, where)
                continue
            if base not in KNOB_DEFAULTS:
                close = difflib.get_close_matches(base, KNOB_DEFAULTS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UserError(f"{where}: unknown knob {name!r}{hint}; known: {', '.join(KNOB_DEFAULTS)}")
            if stage and not (KNOB_DEFAULTS[base][1] and stage.isdigit() and int(stage) < len(widths)):
                raise UserError(f"{where}: knob {name!r}: {base} has no stage {stage!r}")
            if not isinstance(spec, dict):  # a fixed value
                fixed[str(name)] = spec
                continue
            per_stage = bool(spec.get("per_stage", False))
            if per_stage and not KNOB_DEFAULTS[base][1]:
                raise UserError(f"{where}: knob {name!r} is not a per-stage knob")
            names = [f"{base}.{s}" for s in range(len(widths))] if per_stage else [str(name)]
            for n in names:
                knobs[n] = Knob.from_spec(n, spec, where)
        if family == "wrn" and any(n.startswith("depth.") for n in knobs):
            raise UserError(f"{where}: wrn has the same depth in every stage; "
                            "use knob 'depth', not per stage")
        epochs = data.get("epochs", 5)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise UserError(f"{where}: epochs must be an int >= 1, got {epochs!r}")
        recipe = data.get("recipe") or {}
        if not isinstance(recipe, dict):
            raise UserError(f"{where}: recipe must be a mapping of trainer settings, got {recipe!r}")
        min_width = data.get("min_width", 2)
        if not isinstance(min_width, int) or isinstance(min_width, bool) or min_width < 1:
            raise UserError(f"{where}: min_width must be an int >= 1, got {min_width!r}")
        from repnas.spaces._lenders import check_slots_exist, lender_choices, slots

        max_depths = _max_depths(knobs, fixed, len(widths))
        for name in [n for n in [*knobs, *fixed] if n.startswith("lender.")]:
            values = list(knobs[name].choices or ()) if name in knobs else [fixed[name]]
            check_slots_exist(name, values, family, max_depths, where)
        if lender_spec is not None:  # {per_conv: true}: one knob per conv, after the depths are known
            generated = lender_choices(slots(family, tuple(widths), max_depths))
            for n, choices in generated.items():
                if n not in knobs and n not in fixed:
                    knobs[n] = Knob(n, choices=tuple(choices))
        shape = data.get("shape", "solved")
        if shape not in SHAPE_MODES:
            raise UserError(f"{where}: shape must be one of {', '.join(SHAPE_MODES)}, got {shape!r}")
        space = cls(
            name=str(data.get("name", "custom")),
            family=family,
            widths=tuple(widths),
            knobs=knobs,
            fixed=fixed,
            budget=parse_budget(data.get("budget", 100_000), f"{where}: budget").to_value(),
            dataset=str(data.get("dataset", "digits")),
            epochs=epochs,
            recipe=dict(recipe),
            description=str(data.get("description", "")),
            min_width=min_width,
            shape=shape,
            plan_options=_plan_options(data.get("plan_options"), where),
        )
        # Every value a knob can take must make a valid architecture: fail at load, not mid-search.
        # Ranges are checked at their ends (validity is monotone in them), so a huge range loads at once.
        for name, knob in knobs.items():
            for value in _probe_values(knob):
                point = {n: (value if n == name else _first(k)) for n, k in knobs.items()}
                space.architecture(point)
        space.architecture({n: _first(k) for n, k in knobs.items()})
        return space

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> SearchSpace:
        """Parse a space from YAML text or a file path."""
        text, where = str(text_or_path), "space"
        if isinstance(text_or_path, Path) or ("\n" not in text and Path(text).is_file()):
            where = f"space file {text}"
            try:
                text = Path(text).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: not a YAML text file (not UTF-8)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{where}: malformed YAML ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data, where)


def _first(knob: Knob) -> Any:
    return knob.choices[0] if knob.choices is not None else knob.low


def _probe_values(knob: Knob) -> list[Any]:
    """The values load-time validation tries: every choice, or a range's two ends."""
    return list(knob.choices) if knob.choices is not None else [knob.low, knob.high]


def _max_depths(knobs: dict[str, Knob], fixed: dict[str, Any], num_stages: int) -> tuple[int, ...]:
    """The largest depth each stage can take (for generating per-conv lender knobs)."""

    def largest(name: str) -> int | None:
        if name in knobs:
            knob = knobs[name]
            values = list(knob.choices) if knob.choices is not None else [knob.high]
        else:
            values = [fixed[name]] if name in fixed else []
        for value in values:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UserError(f"space: {name} must be a whole number, got {value!r}")
        return int(max(values)) if values else None

    out = []
    for s in range(num_stages):
        depth = largest(f"depth.{s}")
        depth = largest("depth") if depth is None else depth
        out.append(KNOB_DEFAULTS["depth"][0] if depth is None else depth)
    return tuple(out)


def _parse_lender_knob(name: str, spec: Any, num_stages: int, knobs: dict[str, Knob], fixed: dict[str, Any],
                       where: str) -> None:
    """``lender: {per_conv: true}`` (generated later) or ``lender.<s>.<j>``: choices or a fixed slot."""
    from repnas.spaces._lenders import check_lender_knob

    if name == "lender":
        if spec != {"per_conv": True}:
            raise UserError(f"{where}: knob 'lender' takes {{per_conv: true}}; for one conv write "
                            f"lender.<stage>.<conv>: {{choices: [none, '0.1']}} or a fixed '0.1'")
        return
    if isinstance(spec, dict):
        knob = Knob.from_spec(name, spec, where)
        if knob.choices is None:
            raise UserError(f"{where}: knob {name!r} needs choices (none or 'stage.conv' slots)")
        check_lender_knob(name, list(knob.choices), num_stages, where)
        knobs[name] = knob
    else:
        check_lender_knob(name, [spec], num_stages, where)
        fixed[name] = spec


def _lenders_of(values: dict[str, Any], where: str) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """The (borrower, lender) slot pairs of a point's ``lender.<s>.<j>`` values other than ``none``."""
    from repnas.spaces._lenders import NO_LENDER, parse_slot

    pairs = []
    for name, value in values.items():
        if name.startswith("lender.") and value != NO_LENDER:
            pairs.append((parse_slot(name[len("lender."):], where), parse_slot(value, f"{where}: {name}")))
    return tuple(sorted(pairs))


def _plan_options(options: Any, where: str) -> dict[str, Any]:
    """Plan-level keys for every plan of the space; ``like: FAMILY`` copies that family's."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise UserError(f"{where}: plan_options must be a mapping of RepetitionPlan keys")
    options = dict(options)
    like = options.pop("like", None)
    if like is not None:
        from repnas.spaces._registry import model_spec

        spec = model_spec(str(like))
        if spec.plan is None:
            raise UserError(f"{where}: plan_options like {like!r}: that model has no plan")
        family_options = {k: v for k, v in spec.plan.to_dict().items() if k not in ("layers", "banks")}
        options = {**family_options, **options}
    if {"layers", "banks"} & set(options):
        raise UserError(f"{where}: plan_options hold plan-level keys, not layers or banks (the space makes those)")
    from repnas.rescale import RepetitionPlan

    try:
        RepetitionPlan.from_dict({**options, "layers": {}})
    except ValueError as exc:
        raise UserError(f"{where}: plan_options: {exc}") from None
    return options


def _check_shape_mode(arch: Architecture, space: SearchSpace) -> None:
    where = f"space {space.name!r}"
    if space.shape == "fixed" and any(r != 1 for r in arch.width_reps):
        raise UserError(f"{where}: with shape: fixed the solver sizes the sources; width_rep must be 1 "
                        "(use widen to scale the physical widths)")
    if space.shape == "solved" and arch.widen != 1:
        raise UserError(f"{where}: widen needs shape: fixed (in a solved space, width_rep sets the tiling)")
    if arch.widen < 1:
        raise UserError(f"{where}: widen must be >= 1, got {arch.widen}")
    if arch.full_source not in ("plain", "own"):
        raise UserError(f"{where}: full_source must be 'plain' or 'own', got {arch.full_source!r}")


def _check_architecture(arch: Architecture, space: str) -> None:
    where = f"space {space!r}"
    if any(d < 1 for d in arch.depths):
        raise UserError(f"{where}: depth must be >= 1, got {arch.depths}")
    if any(r < 1 for r in arch.width_reps):
        raise UserError(f"{where}: width_rep must be >= 1, got {arch.width_reps}")
    bad = [s for s in arch.shares if s not in SHARE_MODES]
    if bad:
        raise UserError(f"{where}: unknown share {bad[0]!r}; choose one of {', '.join(SHARE_MODES)}")
    if arch.rank < 1:
        raise UserError(f"{where}: rank must be >= 1, got {arch.rank}")
    if arch.bank_scope not in ("stage", "network"):
        raise UserError(f"{where}: bank_scope must be 'stage' or 'network', got {arch.bank_scope!r}")
    from repnas.rescale import SCALAR_MAPS

    if arch.map not in SCALAR_MAPS:
        raise UserError(f"{where}: unknown map {arch.map!r}; choose one of {sorted(SCALAR_MAPS)}")
    if arch.scalar_init not in ("xavier", "identity"):
        raise UserError(f"{where}: scalar_init must be 'xavier' or 'identity', got {arch.scalar_init!r}")
    from repnas.rescale import PLAN_OPTIONS

    for key, allowed in PLAN_OPTIONS.items():
        if getattr(arch, key) not in allowed:
            raise UserError(f"{where}: {key} must be one of {', '.join(allowed)}, got {getattr(arch, key)!r}")


# --------------------------------------------------------------------- built-in spaces
def list_spaces() -> list[str]:
    """Names of the built-in spaces (``spaces/builtin/*.yaml``)."""
    folder = resources.files("repnas.spaces") / "builtin"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (``quick``, ``vgg-depth``, ...) or a space YAML file by path."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text:
        if not Path(text).is_file():
            raise UserError(f"space file {text!r} not found")
        return SearchSpace.from_yaml(Path(text))
    names = list_spaces()
    if text not in names:
        close = difflib.get_close_matches(text, names, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown space {text!r}{hint}; built-in: {', '.join(names)} (or a .yaml path)")
    resource = resources.files("repnas.spaces") / "builtin" / f"{text}.yaml"
    return SearchSpace.from_dict(yaml.safe_load(resource.read_text()), f"space {text!r}")
