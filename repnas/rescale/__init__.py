"""The method: learnable repetition of conv weights (PAPER.md).

A plan (:class:`RepetitionPlan`) says where each conv's weight comes from; :func:`rescale` applies it
to any ``nn.Module`` built from ``nn.Conv2d``; :func:`materialize` turns the result back into plain
layers for deployment; the ``count_*`` functions and :func:`describe` do the accounting.
"""

from repnas.rescale._accounting import count_flops, count_params, count_physical_params, describe, layer_table
from repnas.rescale._apply import materialize, repeated_layers, rescale
from repnas.rescale._bank import TemplateBank
from repnas.rescale._group import WeightGroup, prepare_weight_groups
from repnas.rescale._maps import SCALAR_MAPS, ScalarMap
from repnas.rescale._plan import PLAN_OPTIONS, PLAN_VERSION, BankSpec, LayerRule, RepetitionPlan
from repnas.rescale._repeat import RepeatWeight, tile_layout

__all__ = [
    "PLAN_OPTIONS",
    "PLAN_VERSION",
    "SCALAR_MAPS",
    "BankSpec",
    "LayerRule",
    "RepeatWeight",
    "RepetitionPlan",
    "ScalarMap",
    "TemplateBank",
    "WeightGroup",
    "count_flops",
    "count_params",
    "count_physical_params",
    "describe",
    "layer_table",
    "materialize",
    "prepare_weight_groups",
    "repeated_layers",
    "rescale",
    "tile_layout",
]
