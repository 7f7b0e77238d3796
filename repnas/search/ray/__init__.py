"""The Ray Tune backend of a search (``repnas search --backend ray``): the same search through
``tune.Tuner``, with trials packed onto GPUs by fractional resources and spread over a cluster.

Start reading at :func:`run_ray_search` (``_driver``); a trial runs in ``_trial`` on whichever node
Ray picks, ``_searcher`` is Ray's ``OptunaSearch`` told what the Optuna driver tells, ``_scheduler``
the multi-objective early-stopping rule as a Tune scheduler, ``_results`` reads Tune's results
back into the run directory. Importing this package does not import Ray; running it does.
"""

from repnas.search.ray._driver import run_ray_search

__all__ = ["run_ray_search"]
