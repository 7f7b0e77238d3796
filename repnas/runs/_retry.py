"""Queue a killed or lost trial's point again as the same proposal it was.

Why not ``Study.enqueue_trial``: an enqueued trial has fixed parameters, so Optuna's genetic
samplers never sample it and never give it a generation (``NSGAIISampler:generation``); a trial
without one is in no population, and NSGA-II's next generation was bred from one member fewer
than an uninterrupted search had. The retry carries the killed trial's generation instead: its
point was drawn for that generation. The retry is one new trial row (``Study.add_trial``), written
in one storage call, so a failing write leaves nothing half queued.
"""

from __future__ import annotations

_GENERATION_SUFFIX = ":generation"


def enqueue_retry(study, trial) -> None:
    """Queue ``trial``'s point again (``retry_of`` its number), in ``trial``'s sampler generation."""
    import optuna
    from optuna.trial import TrialState

    inherited = {k: v for k, v in trial.system_attrs.items() if k.endswith(_GENERATION_SUFFIX)}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, system_attrs={"fixed_params": dict(trial.params), **inherited},
        user_attrs={"retry_of": trial.number}))
