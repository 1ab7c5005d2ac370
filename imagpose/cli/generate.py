"""Generate target views from source images + poses and target poses read from files.

Poses are pose images (used as given) or keypoint .json files (our 'openpose18' format or OpenPose output),
rendered the way the official renderer does. The scenario decides the tile layout; 'auto' picks T2 for one
source and one target (the official test.py), T3 for several sources, IMAGPose* for several targets."""

from __future__ import annotations

import json
from pathlib import Path

from ..serving import SERVER_KINDS
from .argument_types import number, parse_grid, parse_positive_pair, parse_size
from .common import (
    add_model_arguments,
    add_output_argument,
    add_runtime_arguments,
    add_sampling_arguments,
    load_pipeline,
    resolve_runtime,
    sampling_changes,
    sampling_from_args,
)

NAME = "generate"
HELP = "generate target images from source image/pose files and target pose files"
SCENARIO_CHOICES = ("auto", "t1", "t2", "t3", "star", "mixed")


def add_arguments(parser) -> None:
    parser.add_argument("--source", nargs=2, action="append", metavar=("IMAGE", "POSE"), required=True,
                        help="a source view: person image and its pose (image or .json); repeat for several")
    parser.add_argument("--target", action="append", metavar="POSE", required=True,
                        help="a target pose (image or .json); repeat for several")
    parser.add_argument("--scenario", default="auto", choices=SCENARIO_CHOICES,
                        help="tile layout: t1/t2/t3/star (IMAGPose*) or mixed (sources then targets, in order)")
    parser.add_argument("--grid", type=parse_grid, default=(2, 2), help="ROWSxCOLS view grid")
    parser.add_argument("--tile-size", type=parse_size, default=None,
                        help="HEIGHTxWIDTH tile size in pixels (default: the first source image's size)")
    parser.add_argument("--pose-size", type=lambda text: parse_positive_pair(text, "WIDTHxHEIGHT", "176x256"),
                        default=None, metavar="WIDTHxHEIGHT",
                        help="image size the target keypoint .json files were measured on, for OpenPose output "
                             "without canvas_width/canvas_height (source keypoints default to their image's size)")
    add_output_argument(parser, "outputs/generate")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    add_runtime_arguments(parser)
    served = parser.add_argument_group("served model")
    served.add_argument("--server", metavar="URL", default=None,
                        help="send the request to a running server (Triton: http://HOST:8000 or grpc://HOST:8001) "
                             "instead of running the model here; the model and runtime flags are then unused")
    served.add_argument("--server-kind", choices=SERVER_KINDS, default="triton", help="what serves --server")
    served.add_argument("--server-timeout", type=number(0, low_inclusive=False), default=600.0, metavar="SECONDS",
                        help="seconds to wait for the server's answer (default 600)")


def build_request(args):
    from .. import scenarios
    from ..canvas import View
    from ..errors import InvalidArgumentError
    from ..pose import keypoints_from_json

    sources = [tuple(s) for s in args.source]
    keypoint_files = [t for t in args.target if Path(t).suffix.lower() == ".json"]
    if args.pose_size and not keypoint_files:
        raise InvalidArgumentError("--pose-size gives the image size of keypoint .json targets, but no --target is a "
                                   ".json file; drop --pose-size.")
    # keypoint targets are read now, so a bad file stops the command before the model is built
    targets = [keypoints_from_json(t, *(args.pose_size or (None, None))) if t in keypoint_files else t
               for t in args.target]
    scenario = args.scenario
    if scenario == "auto":
        scenario = "t2" if len(sources) == 1 and len(targets) == 1 else ("t3" if len(targets) == 1 else "star")
    common = dict(grid=args.grid, tile_size=args.tile_size, seed=args.seed)
    if scenario in ("t1", "t2"):
        if len(sources) != 1 or len(targets) != 1:
            raise InvalidArgumentError(f"--scenario {scenario} takes exactly one --source and one --target, got "
                                       f"{len(sources)} and {len(targets)}; use t3 (several sources), star (several "
                                       "targets) or mixed.")
        return getattr(scenarios, scenario)(*sources[0], targets[0], **common)
    if scenario == "t3":
        if len(targets) != 1:
            raise InvalidArgumentError(f"--scenario t3 takes exactly one --target, got {len(targets)}; use mixed for "
                                       "several sources and targets.")
        return scenarios.t3(sources, targets[0], **common)
    if scenario == "star":
        if len(sources) != 1:
            raise InvalidArgumentError(f"--scenario star (IMAGPose*) takes exactly one --source, got {len(sources)}; "
                                       "use mixed for several sources and targets.")
        return scenarios.imagpose_star(*sources[0], targets, **common)
    views = [View.source(*s) for s in sources] + [View.target(t) for t in targets]
    return scenarios.mixed(views, **common)


def run(args) -> int:
    from ..io import OutputFolder

    with OutputFolder(args.out) as out:  # checked before anything is read or loaded; written when it succeeds
        changes = sampling_changes(args)  # the flags together, before any file is read
        request = build_request(args)
        if args.server:
            result, sampling = _served_result(args, request, changes or None), changes
        else:
            result, sampling = _local_result(args, request)
        files = [f"target_tile{index}.png" for index in request.target_indices]  # named here, never by a server
        for name, image in zip(files, result.targets):
            out.save_image(name, image)
        out.save_image("canvas.png", result.canvas)
        out.write_json("result.json", {"targets": files, "canvas": "canvas.png", "seed": result.seed,
                                       # served: the settings given; the server's model defaults fill the rest
                                       "sampling": sampling if args.server else sampling.to_dict(),
                                       "grid": list(args.grid),
                                       "model": args.server or args.model or f"{args.preset} (random)"})
    target = Path(args.out)
    print(json.dumps({"out": str(target), "targets": [str(target / f) for f in files], "seed": result.seed}))
    return 0


def _local_result(args, request):
    """(result, sampling) of ``request`` from the model named by the model flags, run here with its default
    sampling and the sampling flags given."""
    pipe = load_pipeline(args)
    sampling = sampling_from_args(args, pipe.sampling_config())
    runtime = resolve_runtime(pipe, args, tuple(args.grid))
    return pipe(request, sampling=sampling, progress=not args.no_progress, runtime=runtime).results[0], sampling


def _served_result(args, request, settings: dict | None):
    """The result of ``request`` from the server at ``--server``, with the same seed and the sampling settings
    given (the server's model defaults for the rest)."""
    from ..serving.connect import connect
    from ..serving.wire import WireFormatError

    with connect(args.server, kind=args.server_kind, timeout=args.server_timeout) as client:
        result = client.generate([request], settings)[0]
    if list(result.target_indices) != list(request.target_indices) or len(result.targets) != len(
            request.target_indices):
        raise WireFormatError(f"The server at {args.server} answered tiles {result.target_indices!r} "
                              f"({len(result.targets)} images) for a request whose targets are tiles "
                              f"{request.target_indices}; it is not serving this request correctly.")
    return result
