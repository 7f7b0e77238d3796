"""Cross-layer borrowing as a knob: which conv tiles which earlier conv ("which layers share").

A stage's ``share: borrow`` only lets its convs tile the stage's first conv. The paper's RepVGG-N
borrow across stages (L6 <- L3, L9 <- L4), so every conv may also name a *lender*: any earlier
conv, in the same or an earlier stage. A conv is addressed by a *slot* ``"s.j"``: stage ``s``,
``j``-th main conv of that stage (for ResNet/WRN ``j = 2b`` is block b's conv1, ``2b + 1`` its
conv2; shortcuts and the stem are never slots). The knob ``lender.<s>.<j>`` takes ``none`` (the
stage's ``share`` rule applies) or the slot of an earlier conv.

Why a flat knob per conv instead of a conditional tree: Optuna's samplers (NSGA-II, TPE) and Ray's
``param_space`` both need a static space, and a knob that does not apply (its lender absent at a
smaller depth, or its source too large for this conv at the solved widths) is simply ignored: the
conv then follows its stage's ``share`` rule (or owns its source where that rule was a borrow), and
identical models are caught as duplicates by the search. ``lender: {per_conv: true}`` generates
the knobs: for every slot, ``none`` plus each earlier slot whose shape fits inside it at the
space's reference widths (the image-facing first VGG conv is never a lender: tiling a filter over
3 image channels across feature channels is no design of the paper's, and the existing ``borrow``
excludes it too).
"""

from __future__ import annotations

from dataclasses import dataclass

from repnas.errors import UserError

NO_LENDER = "none"
#: A space with more slots than this cannot generate its lender knobs (the choices grow as the
#: square of the slots); name the lender knobs explicitly instead.
MAX_SLOTS = 64


@dataclass(frozen=True)
class Slot:
    """A main conv by position, with its (out, in) channels at the space's reference widths."""

    stage: int
    index: int
    out: int
    in_: int
    image_facing: bool

    @property
    def key(self) -> str:
        return f"{self.stage}.{self.index}"


def parse_slot(value: str, where: str) -> tuple[int, int]:
    """``"2.1"`` -> (2, 1); ``UserError`` naming ``where`` otherwise."""
    if not isinstance(value, str):
        raise UserError(f"{where}: lender values are '{NO_LENDER}' or quoted 'stage.conv' strings "
                        f"like '1.0', got {value!r}")
    stage, dot, index = value.partition(".")
    if not (dot and stage.isdigit() and index.isdigit()):
        raise UserError(f"{where}: expected '{NO_LENDER}' or a 'stage.conv' slot like '1.0', got {value!r}")
    return int(stage), int(index)


def slots(family: str, widths: tuple[int, ...], max_depths: tuple[int, ...]) -> list[Slot]:
    """Every main conv a space can have (each stage at its largest depth), in network order."""
    from repnas.spaces.models._resnet import STEM_WIDTH

    per_block = 1 if family == "vgg" else 2
    total = per_block * sum(max_depths)
    if total > MAX_SLOTS:
        raise UserError(f"lender: {{per_conv: true}} needs at most {MAX_SLOTS} convs, this space has up to "
                        f"{total}; bound the depth or name lender.<stage>.<conv> knobs explicitly")
    out: list[Slot] = []
    for s, (width, depth) in enumerate(zip(widths, max_depths, strict=True)):
        for j in range(per_block * depth):
            if j > 0:
                in_ = width
            elif s > 0:
                in_ = widths[s - 1]
            else:
                in_ = 0 if family == "vgg" else STEM_WIDTH  # 0: the image (any channel count)
            out.append(Slot(s, j, width, in_, image_facing=family == "vgg" and s == 0 and j == 0))
    return out


def lender_choices(all_slots: list[Slot]) -> dict[str, list[str]]:
    """``{"lender.s.j": ["none", earlier slots that fit]}`` for every slot with a possible lender."""
    knobs: dict[str, list[str]] = {}
    for k, slot in enumerate(all_slots):
        lenders = [other.key for other in all_slots[:k] if not other.image_facing
                   and other.out <= slot.out and other.in_ <= slot.in_]
        if lenders:
            knobs[f"lender.{slot.key}"] = [NO_LENDER, *lenders]
    return knobs


def check_lender_knob(name: str, values: list, num_stages: int, where: str) -> None:
    """A ``lender.<s>.<j>`` knob names a real stage and only earlier slots (or ``none``)."""
    borrower = parse_slot(name.partition(".")[2], f"{where}: knob {name!r}")
    if borrower[0] >= num_stages:
        raise UserError(f"{where}: knob {name!r}: there is no stage {borrower[0]}")
    for value in values:
        if value == NO_LENDER:
            continue
        lender = parse_slot(value, f"{where}: knob {name!r}")
        if lender >= borrower:
            raise UserError(f"{where}: knob {name!r}: a conv borrows only from an earlier conv, got {value!r}")


def check_slots_exist(name: str, values: list, family: str, max_depths: tuple[int, ...], where: str) -> None:
    """Every slot a lender knob names exists at the stage's largest depth (else it is a typo)."""
    per_block = 1 if family == "vgg" else 2
    for text in [name.partition(".")[2], *(v for v in values if v != NO_LENDER)]:
        stage, index = parse_slot(text, f"{where}: knob {name!r}")
        if stage >= len(max_depths) or index >= per_block * max_depths[stage]:
            raise UserError(f"{where}: knob {name!r}: stage {stage} has no conv {index} even at its largest depth")


def apply_lenders(main_convs: dict[tuple[int, int], str], layers: dict[str, dict],
                  lenders: tuple[tuple[tuple[int, int], tuple[int, int]], ...]) -> dict[str, dict | None]:
    """Make each borrower of ``lenders`` (both present at this depth) borrow its lender's source.

    ``main_convs`` maps slots to module names. A borrow replaces whatever the stage's share rule
    gave the conv (bank membership or a borrow of the stage anchor); those rules are returned by
    conv name, for :func:`drop_misfits` to restore where the lender's source does not fit.
    """
    replaced: dict[str, dict | None] = {}
    for borrower, lender in lenders:
        if borrower in main_convs and lender in main_convs:
            name = main_convs[borrower]
            replaced[name] = layers.get(name)
            layers[name] = {"borrow": main_convs[lender]}
    return replaced


def drop_misfits(order: list[str], shapes: dict[str, tuple[int, int, tuple[int, ...]]],
                 layers: dict[str, dict], banks: dict[str, dict], own: dict[str, tuple[int, int]],
                 replaced: dict[str, dict | None], keep_full: bool = False) -> None:
    """Undo every borrow whose (resolved) source does not fit its conv.

    ``order`` lists convs in network order (lenders before borrowers), ``shapes`` gives each conv's
    (out, in, kernel). A misfit borrower gets back its ``replaced`` share rule when that was a bank,
    else its ``own`` source (a conv whose own source is its full shape stays plain unless
    ``keep_full``: the space's ``full_source: own``). One pass suffices because lenders come first.
    """
    source: dict[str, tuple[int, int]] = {}
    for name in order:
        out, in_, kernel = shapes[name]
        rule = layers.get(name)
        if rule is not None and "borrow" in rule:
            lender = rule["borrow"]
            src = source.get(lender, shapes[lender][:2])
            if src[0] > out or src[1] > in_ or shapes[lender][2] != kernel:
                own_shape = own.get(name, (out, in_))
                previous = replaced.get(name)
                if previous is not None and "bank" in previous:
                    layers[name] = previous
                elif own_shape == (out, in_) and not keep_full:
                    del layers[name]
                else:
                    layers[name] = {"own": list(own_shape)}
                rule = layers.get(name)
            else:
                source[name] = src
                continue
        if rule is None:
            source[name] = (out, in_)
        elif "own" in rule:
            source[name] = tuple(rule["own"])  # type: ignore[assignment]
        else:
            bank = banks[rule["bank"]]
            source[name] = (bank["out"], bank["in"])
