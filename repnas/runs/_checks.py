"""Field checks of a :class:`~repnas.runs._rundir.SearchConfig` read from ``search.yaml``.

``search.yaml`` is a file users edit (to raise ``trials``, to move ``data_dir``); a value of the
wrong type there must give one line naming the key, not a traceback deep in the search, and never
a run that is then broken for good.
"""

from __future__ import annotations

from typing import Any

from repnas.errors import UserError

_MAX_INT64 = 2**63 - 1


def check_budget(value: Any, bad) -> None:
    """A budget is a count, a range ``LOW:HIGH`` or levels (:func:`~repnas.spaces.parse_budget`),
    every count an int >= 1 that fits in 64 bits."""
    from repnas.spaces import parse_budget

    expected = "a count >= 1, a range LOW:HIGH or levels A,B,C, each fitting in 64 bits"
    if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)):
        raise bad("budget", expected, value)
    try:
        spec = parse_budget(value)
    except (UserError, ValueError, TypeError, OverflowError):
        raise bad("budget", expected, value) from None
    if not 1 <= spec.smallest <= spec.largest <= _MAX_INT64:
        raise bad("budget", expected, value)


def check_search_fields(search):
    """Return ``search`` after checking every field's type and range (``UserError`` naming the key)."""
    def bad(key: str, expected: str, value: Any) -> UserError:
        return UserError(f"search.yaml: {key} must be {expected}, got {value!r}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    ints = {"trials": 1, "epochs": 1, "seed": 0, "workers": 0, "population_size": 0, "max_failures": 0}
    for key, low in ints.items():
        value = getattr(search, key)
        if not is_int(value) or not low <= value <= _MAX_INT64:
            raise bad(key, f"an int >= {low} that fits in 64 bits", value)
    check_budget(search.budget, bad)
    if not isinstance(search.gpus_per_trial, (int, float)) or isinstance(search.gpus_per_trial, bool) \
            or not 0 < search.gpus_per_trial <= 64:
        raise bad("gpus_per_trial", "a number in (0, 64]", search.gpus_per_trial)
    for key in ("dataset", "storage", "study", "sampler", "backend", "early_stop", "device", "space_name"):
        if not isinstance(getattr(search, key), str):
            raise bad(key, "a string", getattr(search, key))
    if search.data_dir is not None and not isinstance(search.data_dir, str):
        raise bad("data_dir", "a path or null", search.data_dir)
    if search.image_size is not None and not (is_int(search.image_size) and 1 <= search.image_size <= 65536):
        raise bad("image_size", "an int in [1, 65536] or null", search.image_size)
    for key in ("space", "recipe", "replay"):
        if not isinstance(getattr(search, key), dict):
            raise bad(key, "a mapping", getattr(search, key))
    objectives = search.objectives
    if not (isinstance(objectives, list) and objectives and all(
            isinstance(o, dict) and isinstance(o.get("name"), str)
            and o.get("direction") in ("maximize", "minimize") for o in objectives)):
        raise bad("objectives", "a list of {name, direction: maximize|minimize}", objectives)
    if search.backend not in ("optuna", "ray"):
        raise bad("backend", "optuna or ray", search.backend)
    return search
