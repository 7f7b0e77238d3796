"""Natural order for names with numbers in them: ``vgg4 < vgg10``, ``train/3/9.png < train/3/10.png``."""

from __future__ import annotations

import re


def natural_key(name: str) -> list[int | str]:
    """A sort key under which digit runs compare as numbers (as timm lists its models)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
