"""The parameter budget of a search: one count, a range, or levels.

* ``600k``            one budget: every candidate is solved to fill it (accuracy vs parameters is
                      then a vertical line at the budget);
* ``50k:2M``          a range: the budget becomes a searched dimension, log-uniform between the two
                      (an Optuna ``IntDistribution(log=True)`` named ``budget``), so the front spans
                      parameter counts;
* ``100k,300k,1M``    levels: a categorical dimension ``budget`` over the given counts.

The same text forms are accepted by ``--budget`` and by a space YAML's ``budget:`` key (a YAML list
of counts is levels too). :meth:`BudgetSpec.to_value` is what ``search.yaml`` stores: an int for one
budget (as before), the normalised text otherwise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from repnas.errors import UserError

#: the name of the searched budget dimension (an Optuna parameter, ``knob.budget`` in trials.parquet)
BUDGET_PARAM = "budget"
#: ``12,000`` is one count written with a thousands separator, not levels 12 and 0
_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+")


@dataclass(frozen=True)
class BudgetSpec:
    """``low == high`` and no levels: one budget; ``levels``: a categorical budget; else a range."""

    low: int
    high: int
    levels: tuple[int, ...] = ()

    @property
    def searched(self) -> bool:
        return bool(self.levels) or self.low != self.high

    @property
    def smallest(self) -> int:
        return min(self.levels) if self.levels else self.low

    @property
    def largest(self) -> int:
        return max(self.levels) if self.levels else self.high

    def to_optuna(self):
        """The Optuna distribution of the budget dimension (None for one budget)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        if self.levels:
            return CategoricalDistribution(list(self.levels))
        if self.low != self.high:
            return IntDistribution(self.low, self.high, log=True)
        return None

    def to_value(self) -> int | str:
        """What a config file stores: the count, ``LOW:HIGH`` or ``A,B,C``."""
        if self.levels:
            return ",".join(str(v) for v in self.levels)
        return self.low if self.low == self.high else f"{self.low}:{self.high}"

    def describe(self) -> str:
        if self.levels:
            return "levels " + ", ".join(f"{v:,}" for v in self.levels)
        if self.low == self.high:
            return f"{self.low:,}"
        return f"{self.low:,} to {self.high:,} (log-uniform)"

    def budget_of(self, point: dict[str, Any]) -> int:
        """The budget of a sampled point: its ``budget`` parameter where the budget is searched."""
        if not self.searched:
            return self.low
        if BUDGET_PARAM not in point:
            raise UserError(f"the point {point} lacks the searched {BUDGET_PARAM!r} dimension")
        return int(point[BUDGET_PARAM])


def parse_budget(value: Any, what: str = "budget") -> BudgetSpec:
    """``12k`` | ``50k:2M`` | ``100k,300k,1M`` (or a list of counts) -> :class:`BudgetSpec`."""
    if isinstance(value, (list, tuple)):
        parts: list[Any] = list(value)
        kind = "levels"
    elif isinstance(value, str) and ":" in value:
        parts = value.split(":")
        if len(parts) != 2:
            raise UserError(f"{what}: a range is LOW:HIGH like 50k:2M, got {value!r}")
        kind = "range"
    elif isinstance(value, str) and "," in value and not _THOUSANDS.fullmatch(value.strip()):
        parts = [p for p in value.split(",") if p.strip()]
        kind = "levels"
    else:
        count = parse_count(value, what)
        return BudgetSpec(count, count)
    counts = [parse_count(p.strip() if isinstance(p, str) else p, what) for p in parts]
    if kind == "range":
        low, high = counts
        if low >= high:
            raise UserError(f"{what}: the range {value!r} must go from a smaller to a larger count")
        return BudgetSpec(low, high)
    levels = tuple(sorted(set(counts)))
    if not levels:
        raise UserError(f"{what}: no budget levels in {value!r}")
    if len(levels) == 1:
        return BudgetSpec(levels[0], levels[0])
    return BudgetSpec(levels[0], levels[-1], levels)


#: counts (budgets) must fit an int64 where they are stored
MAX_COUNT = 2**63


def parse_count(value: Any, what: str = "budget") -> int:
    """``600k`` -> 600000, ``1.5M`` -> 1500000, ``12000`` -> 12000; ``UserError`` otherwise."""
    if isinstance(value, bool):
        raise UserError(f"{what}: expected a count like 600k, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip().lower().replace("_", "").replace(",", "")
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:], 1.0)
        try:
            number = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise UserError(f"{what}: expected a count like 600k or 1.5M, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"{what}: must be a positive count, got {value!r}")
    if number >= MAX_COUNT:  # it is stored as an int64 (SQLite, parquet)
        raise UserError(f"{what}: {value!r} is too large (at most {MAX_COUNT - 1:.3g})")
    return round(number)
