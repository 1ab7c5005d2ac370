"""ILC target masking: which tiles of the grid a training item hides (targets), and which visible tile feeds
DINOv2 and the FLC tokenizer (the reference).

Official (``pose_dataset.py``): one coin flip per tile, all-hidden and all-visible rejected, so on the 2x2 grid
each of the 14 patterns is equally likely and 1..3 tiles are targets (the paper says 1-4; the code never hides
every tile, since the FLC reference must be visible). ``min_targets`` / ``max_targets`` narrow the count (e.g.
``1, 1`` trains one-target requests only); the draw stays uniform over the allowed patterns, for any grid.
"""

from __future__ import annotations

import torch

from imagpose.errors import InvalidArgumentError


def check_target_range(num_views: int, min_targets: int, max_targets: int | None) -> tuple[int, int]:
    """(min, max) targets per item for a grid of ``num_views`` tiles; at least one tile stays visible."""
    high = num_views - 1 if max_targets is None else max_targets
    if num_views < 2:
        raise InvalidArgumentError(f"A training grid needs at least 2 tiles (one source, one target), got {num_views}.")
    if not 1 <= min_targets <= high <= num_views - 1:
        raise InvalidArgumentError(
            f"Targets per item must satisfy 1 <= min_targets ({min_targets}) <= max_targets ({high}) <= tiles - 1 "
            f"({num_views - 1}): every item needs a target and a visible source.")
    return min_targets, high


def draw_targets(generator: torch.Generator, num_views: int, min_targets: int = 1,
                 max_targets: int | None = None) -> list[int]:
    """Sorted indices of the hidden tiles: independent fair coin flips per tile, redrawn until the count of hidden
    tiles lies in [min_targets, max_targets] (the official rejection sampling; uniform over the allowed patterns)."""
    low, high = check_target_range(num_views, min_targets, max_targets)
    while True:
        hidden = torch.rand(num_views, generator=generator) < 0.5
        if low <= int(hidden.sum()) <= high:
            return [i for i in range(num_views) if hidden[i]]


def draw_reference(generator: torch.Generator, visible: list[int]) -> int:
    """The reference tile for DINOv2 and the FLC tokenizer: a uniformly drawn visible tile."""
    return visible[int(torch.randint(len(visible), (1,), generator=generator))]
