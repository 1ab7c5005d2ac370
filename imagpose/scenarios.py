"""The paper's user scenarios as request builders (Sec. 4.3, Fig. 7-9).

Each helper fills a grid (2x2 by default, the official layout; row-major tiles) and returns a
:class:`~imagpose.canvas.PoseRequest`. A source is ``(person image, its pose)``; a target is a pose.

    t1             one source + one target pose replicated into every other tile (the paper's default
                   1->1 evaluation; all replicas are generated, ``primary`` is the first)
    t2             the source replicated into every tile but the last, the target in the last tile
                   (official ``test.py`` with one source)
    t3             several sources (cycled in order to fill the tiles before the last), one target last
                   (official ``test.py`` duplicates a random source when given 2; we cycle deterministically)
    imagpose_star  one source in tile 0 and several target poses after it, the rest filled with the
                   source (official ``test_batch.py`` with 3 targets); the paper's IMAGPose*
    mixed          any explicit list of views that fills the grid
"""

from __future__ import annotations

from .canvas import PoseRequest, View, check_grid
from .errors import InvalidArgumentError


def _num_views(grid: tuple[int, int]) -> int:
    check_grid(grid)
    return grid[0] * grid[1]


def t1(source_image, source_pose, target_pose, grid=(2, 2), **kwargs) -> PoseRequest:
    n = _num_views(grid)
    return PoseRequest([View.source(source_image, source_pose)] + [View.target(target_pose)] * (n - 1),
                       grid=grid, **kwargs)


def t2(source_image, source_pose, target_pose, grid=(2, 2), **kwargs) -> PoseRequest:
    n = _num_views(grid)
    return PoseRequest([View.source(source_image, source_pose)] * (n - 1) + [View.target(target_pose)],
                       grid=grid, **kwargs)


def t3(sources, target_pose, grid=(2, 2), **kwargs) -> PoseRequest:
    """``sources``: list of (image, pose) pairs, at most rows*cols - 1."""
    n = _num_views(grid)
    if not sources:
        raise InvalidArgumentError("t3 needs at least one (image, pose) source.")
    if len(sources) > n - 1:
        raise InvalidArgumentError(f"t3 on a {grid[0]}x{grid[1]} grid takes at most {n - 1} sources, got "
                                   f"{len(sources)}; pass fewer sources or a larger grid.")
    views = [View.source(*sources[i % len(sources)]) for i in range(n - 1)]
    return PoseRequest(views + [View.target(target_pose)], grid=grid, **kwargs)


def imagpose_star(source_image, source_pose, target_poses, grid=(2, 2), **kwargs) -> PoseRequest:
    """One source, up to rows*cols - 1 targets generated in one pass."""
    n = _num_views(grid)
    if not target_poses:
        raise InvalidArgumentError("imagpose_star needs at least one target pose.")
    if len(target_poses) > n - 1:
        raise InvalidArgumentError(f"imagpose_star on a {grid[0]}x{grid[1]} grid takes at most {n - 1} targets, got "
                                   f"{len(target_poses)}; pass fewer targets or a larger grid.")
    source = View.source(source_image, source_pose)
    views = [source] + [View.target(p) for p in target_poses]
    views += [source] * (n - len(views))
    return PoseRequest(views, grid=grid, **kwargs)


def mixed(views: list[View], grid=(2, 2), **kwargs) -> PoseRequest:
    return PoseRequest(list(views), grid=grid, **kwargs)


SCENARIOS = {"t1": t1, "t2": t2, "t3": t3, "imagpose_star": imagpose_star, "mixed": mixed}
