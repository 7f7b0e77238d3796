"""The convs of any model, in the order they run, and the repetition knobs they admit.

Why forward hooks rather than ``named_modules`` order: a module's attribute order is not its
execution order (torchvision's ResNet registers ``downsample`` after ``conv2`` but a user's block
may define its shortcut first), and "tile an *earlier* conv" must mean earlier in the computation,
so that a lender's source exists in every reading of the network. One forward pass of a zero image
on the meta device (no memory, no arithmetic) records each conv's first call and its input size; a
conv the forward pass never calls is left plain (its weight would never be trained).

Knobs derived from the graph (:func:`derive_knobs`):

* ``lender.<conv>``: ``none`` plus every earlier conv that *fits*: same kernel and groups, and its
  weight no larger than this conv's on both channel axes (a lender's source is never larger than its
  weight, so its source fits at any budget). The image-facing conv is never a lender (a filter over
  the image's 3 channels tiled across feature channels is no design of the paper's). Models with
  more than :data:`MAX_PER_CONV` convs get one knob per equal-shape *group* (``lender.g<k>``: ``none``,
  ``self`` = the group's later members tile its first, or an earlier group's first conv that fits),
  as the lender choices grow with the square of the convs.
* ``share.g<k>`` (``own`` | ``bank``) for each group of at least two equal-shape convs: ``bank``
  makes its members mix one rank-``rank`` template bank.

Grouped and depthwise convs (MobileNet, ResNeXt) tile within their group structure: the weight of a
grouped conv is (out, in/groups, k, k), so a tile never mixes the inputs of two groups; the input
side is kept whole and the output side is tiled in whole groups (a depthwise conv reuses the
filters of a smaller set of channels). ``grouped: plain`` leaves them plain instead; either way
:func:`plain_reasons` says why a conv stays plain, which ``--dry-run`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from repnas.errors import UserError

NO_LENDER = "none"
#: the group's later members tile its first member (grouped lender knob)
SELF_LENDER = "self"
#: more convs than this get grouped lender knobs instead of one per conv
MAX_PER_CONV = 64


@dataclass(frozen=True)
class ConvNode:
    """One conv as it runs: weight shape (``in_`` per group), groups, input size, order."""

    name: str
    out: int
    in_: int
    kernel: tuple[int, ...]
    groups: int
    input_size: tuple[int, ...]
    order: int
    image_facing: bool

    @property
    def grouped(self) -> bool:
        return self.groups > 1

    @property
    def out_per_group(self) -> int:
        return self.out // self.groups

    @property
    def shape_key(self) -> tuple:
        return (self.out, self.in_, self.kernel, self.groups)

    def fits_in(self, other: ConvNode) -> bool:
        """Whether this conv's weight (hence any source of it) can tile ``other``'s."""
        return (self.kernel == other.kernel and self.groups == other.groups
                and self.out <= other.out and self.in_ <= other.in_)


@dataclass(frozen=True)
class Graph:
    """The executed convs in order, the convs never called, and the group of each conv."""

    convs: tuple[ConvNode, ...]
    unused: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]  # equal-shape groups in order of their first member

    def group_of(self, name: str) -> int:
        return next(k for k, members in enumerate(self.groups) if name in members)

    @property
    def by_name(self) -> dict[str, ConvNode]:
        return {c.name: c for c in self.convs}


def trace(model: nn.Module, input_shape: tuple[int, int, int], spec: str = "model") -> Graph:
    """Run ``model`` once on a zero image (meta device, eval mode) and record its convs in order."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise UserError(f"model {spec!r} has no nn.Conv2d layers: nothing to repeat")
    calls: list[tuple[str, tuple[int, ...], bool]] = []
    seen: set[str] = set()
    image: list[torch.Tensor] = []

    def hook(name: str):
        def record(module, inputs):
            if name not in seen:
                seen.add(name)
                calls.append((name, tuple(inputs[0].shape[2:]), inputs[0] is image[0]))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in convs.items()]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("meta")
        with torch.no_grad():
            image.append(torch.zeros(1, *input_shape, device=device))
            model(image[0])
    except Exception as exc:
        raise UserError(f"model {spec!r}: a forward pass on a {'x'.join(map(str, input_shape))} input failed "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    nodes = []
    for k, (name, size, on_image) in enumerate(calls):
        m = convs[name]
        nodes.append(ConvNode(name, m.out_channels, m.in_channels // m.groups, tuple(m.kernel_size), m.groups,
                              size, k, image_facing=on_image or k == 0))
    groups: dict[tuple, list[str]] = {}
    for c in nodes:
        groups.setdefault(c.shape_key, []).append(c.name)
    return Graph(tuple(nodes), tuple(n for n in convs if n not in seen),
                 tuple(tuple(v) for v in groups.values()))


def lender_choices(graph: Graph) -> dict[str, list[str]]:
    """``{"lender.<conv>": ["none", earlier convs that fit]}`` for every conv with a possible lender."""
    knobs: dict[str, list[str]] = {}
    for k, conv in enumerate(graph.convs):
        lenders = [other.name for other in graph.convs[:k] if not other.image_facing and other.fits_in(conv)]
        if lenders:
            knobs[f"lender.{conv.name}"] = [NO_LENDER, *lenders]
    return knobs


def grouped_lender_choices(graph: Graph) -> dict[str, list[str]]:
    """``{"lender.g<k>": ["none", "self"?, earlier groups' first convs that fit]}``."""
    by_name = graph.by_name
    knobs: dict[str, list[str]] = {}
    for k, members in enumerate(graph.groups):
        first = by_name[members[0]]
        choices = [NO_LENDER]
        if len(members) > 1 and not first.image_facing:
            choices.append(SELF_LENDER)
        for other in graph.groups[:k]:
            anchor = by_name[other[0]]
            if not anchor.image_facing and anchor.fits_in(first):
                choices.append(anchor.name)
        if len(choices) > 1:
            knobs[f"lender.g{k}"] = choices
    return knobs


def bank_groups(graph: Graph) -> list[int]:
    """Groups whose members can mix one bank: at least two equal-shape convs, not image-facing."""
    by_name = graph.by_name
    return [k for k, members in enumerate(graph.groups)
            if len(members) >= 2 and not by_name[members[0]].image_facing]


def derive_knobs(graph: Graph, lender: str = "auto") -> dict[str, list[str]]:
    """The categorical knobs of a model space: lender knobs (``per_conv``, ``grouped`` or ``auto``,
    which is per conv up to :data:`MAX_PER_CONV` convs) and ``share.g<k>`` per bankable group."""
    if lender == "auto":
        lender = "per_conv" if len(graph.convs) <= MAX_PER_CONV else "grouped"
    if lender == "per_conv":
        if len(graph.convs) > MAX_PER_CONV:
            raise UserError(f"lender: per_conv needs at most {MAX_PER_CONV} convs, the model has "
                            f"{len(graph.convs)}; use lender: grouped (one knob per equal-shape group)")
        knobs = lender_choices(graph)
    elif lender == "grouped":
        knobs = grouped_lender_choices(graph)
    elif lender == "none":
        knobs = {}
    else:
        raise UserError(f"lender must be auto, per_conv, grouped or none, got {lender!r}")
    for k in bank_groups(graph):
        knobs[f"share.g{k}"] = ["own", "bank"]
    return knobs


def plain_reasons(graph: Graph, grouped: str = "tile") -> dict[str, str]:
    """Convs that stay plain whatever the point, with the reason (``--dry-run`` prints them)."""
    reasons = {name: "never called by the forward pass" for name in graph.unused}
    if grouped == "plain":
        for c in graph.convs:
            if c.grouped:
                reasons[c.name] = f"grouped conv (groups={c.groups}) left plain (grouped: plain)"
    return reasons
