"""ILC target masking: the official uniform draw over the allowed hidden-tile patterns, and the reference tile."""

import collections

import pytest
import torch

from imagpose.errors import InvalidArgumentError
from imagpose.train.masking import check_target_range, draw_reference, draw_targets


def test_official_2x2_draw_is_uniform_over_the_14_patterns():
    generator = torch.Generator().manual_seed(0)
    draws = 14000
    patterns = collections.Counter(tuple(draw_targets(generator, 4)) for _ in range(draws))
    assert len(patterns) == 14  # never none, never all four
    assert all(1 <= len(p) <= 3 for p in patterns)
    expected, sigma = draws / 14, (draws / 14 * (1 - 1 / 14)) ** 0.5
    assert all(abs(count - expected) < 5 * sigma for count in patterns.values()), patterns
    by_count = collections.Counter(len(p) for p in patterns.elements())
    for hidden, share in ((1, 4 / 14), (2, 6 / 14), (3, 4 / 14)):  # P(k hidden) of the official code
        assert abs(by_count[hidden] / draws - share) < 0.02


@pytest.mark.parametrize("num_views, low, high", [(4, 1, 1), (4, 3, 3), (6, 2, 4), (9, 1, None)])
def test_narrowed_counts_and_other_grids(num_views, low, high):
    generator = torch.Generator().manual_seed(1)
    counts = {len(draw_targets(generator, num_views, low, high)) for _ in range(300)}
    assert min(counts) == low and max(counts) == (num_views - 1 if high is None else high)


@pytest.mark.parametrize("num_views, low, high", [(4, 0, 2), (4, 2, 1), (4, 1, 4), (1, 1, None)])
def test_impossible_ranges_are_user_errors(num_views, low, high):
    with pytest.raises(InvalidArgumentError, match="target|tiles"):
        check_target_range(num_views, low, high)


def test_reference_is_a_visible_tile_and_every_one_is_drawn():
    generator = torch.Generator().manual_seed(2)
    seen = collections.Counter(draw_reference(generator, [0, 2, 3]) for _ in range(600))
    assert set(seen) == {0, 2, 3} and min(seen.values()) > 150
