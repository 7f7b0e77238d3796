"""What can be built: registered model families (base model + RepetitionPlan) and search spaces."""

from repnas.spaces import _source  # noqa: F401  (registers the ``external`` base: a user's model)
from repnas.spaces import models as _models  # noqa: F401  (registers the families)
from repnas.spaces._budget import InfeasibleError, Solution, smallest_candidate
from repnas.spaces._budget_spec import BUDGET_PARAM, BudgetSpec, parse_budget, parse_count
from repnas.spaces._datasets_info import DATASET_INFO, DatasetInfo, dataset_info
from repnas.spaces._model_space import DEFAULT_KNOBS, ModelSpace
from repnas.spaces._registry import (
    ModelSpec,
    build_model,
    build_spec,
    create_model,
    default_dataset,
    list_models,
    model_spec,
    register_family,
    register_model,
)
from repnas.spaces._space import (
    KNOB_DEFAULTS,
    Architecture,
    Knob,
    SearchSpace,
    list_spaces,
    load_space,
)

__all__ = [
    "BUDGET_PARAM",
    "DATASET_INFO",
    "DEFAULT_KNOBS",
    "KNOB_DEFAULTS",
    "Architecture",
    "BudgetSpec",
    "DatasetInfo",
    "InfeasibleError",
    "Knob",
    "ModelSpace",
    "ModelSpec",
    "SearchSpace",
    "Solution",
    "build_model",
    "build_spec",
    "create_model",
    "dataset_info",
    "default_dataset",
    "list_models",
    "list_spaces",
    "load_space",
    "model_spec",
    "parse_budget",
    "parse_count",
    "register_family",
    "register_model",
    "smallest_candidate",
]
