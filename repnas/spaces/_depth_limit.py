"""The deepest stage a search space may ask for, checked before a search writes anything.

Why a limit at all: the budget solver builds each candidate's layer layout (a meta-device model,
``repnas.spaces._budget``) to count its parameters, so the cost of one proposal grows with its depth
(measured on 2 CPU cores: the smallest-candidate scan of ``quick`` took 0.5 s at 128 convs per stage
and 2.7 s at 512). A ``depth: {high: 100000}`` typo made the first trial build a 50000-conv model
and the search sat silent. And depth repetition makes deep candidates cheap in parameters (a
borrowed conv adds only its bias and BatchNorm), so the budget alone does not rule them out.

256 convs (or blocks) per stage is above every published family the method is meant for (VGG's
stages hold at most 4 convs, ResNet-1202's 200 blocks) and keeps a proposal's solve well under a
second.
"""

from __future__ import annotations

from repnas.errors import UserError

#: the most convs (VGG) or blocks (ResNet, WRN) one stage of a searched model may have
MAX_STAGE_DEPTH = 256


def check_stage_depths(space) -> None:
    """Refuse a space whose depth knob (or fixed depth) reaches past :data:`MAX_STAGE_DEPTH`."""
    for name, knob in space.knobs.items():
        if name.partition(".")[0] != "depth":
            continue
        deepest = max(knob.choices) if knob.choices is not None else knob.high
        if deepest is not None and int(deepest) > MAX_STAGE_DEPTH:
            what = "a choice" if knob.choices is not None else "high"
            raise UserError(f"space {space.name!r}: knob depth {what} {deepest} is above "
                            f"{MAX_STAGE_DEPTH}, the deepest stage repnas searches; lower it")
    for name, value in space.fixed.items():
        if name.partition(".")[0] == "depth" and isinstance(value, int) and value > MAX_STAGE_DEPTH:
            raise UserError(f"space {space.name!r}: depth {value} is above {MAX_STAGE_DEPTH}, the deepest stage "
                            "repnas searches; lower it")
