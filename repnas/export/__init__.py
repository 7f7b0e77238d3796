"""What a search delivers: its chosen trials as files that need neither the search nor, for the
deployable ones, repnas.

:func:`export_trials` writes, per chosen trial (the Pareto front, the best ``top``, or given
numbers), the run config ``repnas train`` accepts as is and the materialized model's plain
``state_dict``; ``_deploy`` adds TorchScript and ONNX of the materialized model, each checked
against the repeated one. An export folder appears whole or not at all (it is staged beside the
final name and renamed). Start reading at :func:`export_trials`.
"""

from repnas.export._deploy import check_batch, write_deployables
from repnas.export._export import choose_trials, export_trials, load_run_trials

__all__ = ["check_batch", "choose_trials", "export_trials", "load_run_trials", "write_deployables"]
