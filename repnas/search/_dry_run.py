"""``repnas search --dry-run N``: what a search would build, before any training.

The points are the search sampler's first ``N`` proposals (its own seeded sampler asked ``N`` times
on an in-memory study with no results yet), each solved by the space's budget solver exactly as a
trial would be: source and physical widths, exact parameters, budget fill and forward FLOPs
(2 x multiply-adds, ``torch.utils.flop_counter``). Nothing is trained and nothing is written.
"""

from __future__ import annotations

from typing import Any

from repnas.runs._rundir import SearchConfig


def dry_run_rows(search: SearchConfig, count: int, sampler=None) -> list[dict[str, Any]]:
    """One dict per sampled point: ``point``, and either the solved model (``source_widths``,
    ``physical_widths``, ``params``, ``fill``, ``flops``) or ``infeasible`` (the solver's reason)."""
    import optuna

    from repnas.errors import UserError
    from repnas.search._runner import _flops
    from repnas.search._samplers import make_sampler, search_population
    from repnas.spaces import InfeasibleError

    if count < 1:
        raise UserError(f"--dry-run needs N >= 1, got {count}")
    space = search.search_space()
    distributions = space.distributions()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler is None:
        sampler = make_sampler(search.sampler, search.seed, search_population(search))
    study = optuna.create_study(directions=search.directions, sampler=sampler)
    shape = search.dataset_shape()
    rows = []
    for _ in range(count):
        point = study.ask(fixed_distributions=distributions).params
        row: dict[str, Any] = {"point": dict(point)}
        try:
            solution = space.solve(point, search.budget, shape)
        except InfeasibleError as exc:
            row["infeasible"] = str(exc)
        else:
            row.update(source_widths=list(solution.source_widths), physical_widths=list(solution.physical_widths),
                       params=int(solution.params), fill=float(solution.fill),
                       flops=_flops(solution.model_config, shape), notes=list(solution.notes))
        rows.append(row)
    return rows


def dry_run_text(search: SearchConfig, count: int) -> str:
    """The rows of :func:`dry_run_rows` as the lines ``repnas search --dry-run`` prints."""
    rows = dry_run_rows(search, count)
    lines = [f"dry run of {search.space_name or 'the space'} on {search.dataset}, budget {search.budget:,}: "
             f"the {search.sampler} sampler's first {count} point(s), nothing trained"]
    space = search.search_space()
    if hasattr(space, "reference_line"):  # a model space: the plain model the candidates repeat
        lines.append(space.reference_line(search.dataset_shape()))
    for k, row in enumerate(rows):
        knobs = " ".join(f"{name}={value}" for name, value in row["point"].items())
        lines.append(f"[{k}] {knobs}")
        if "infeasible" in row:
            lines.append(f"    infeasible: {row['infeasible']}")
            continue
        lines.append(f"    source widths {row['source_widths']}  physical widths {row['physical_widths']}")
        lines.append(f"    params {row['params']:,} ({100 * row['fill']:.1f}% of budget)  "
                     f"FLOPs {row['flops']:,} per image (2 x multiply-adds)")
        lines += [f"    {note}" for note in row.get("notes", ())]
    return "\n".join(lines)
