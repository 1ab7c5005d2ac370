"""Serve the pipeline over HTTP on Ray Serve: POST /generate (wire-format JSON in, wire-format JSON or PNG tiles
out), GET /healthz, /readyz, /stats and /docs. Requests arriving together are batched into one pipeline call.
Runs until Ctrl-C (or SIGTERM), then stops the service and the Ray it started. See docs/serving.md."""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..serving.service_config import (
    SERVED_RUNTIMES,
    check_batch_wait,
    check_num_cpus,
    check_positive_int,
    parse_autoscale,
)
from .argument_types import from_check, model_folder, seed

NAME = "serve"
HELP = "serve the pipeline over HTTP on Ray Serve (batched; local Ray or a cluster)"


def add_arguments(parser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="DIR", default=None, type=model_folder,
                       help="pipeline folder; default: the shipped trained model (tiny-people)")
    group.add_argument("--preset", default=None, choices=["tiny", "mid", "sd15"],
                       help="architecture preset with deterministic RANDOM weights, used when --model is not given")
    group.add_argument("--weights-seed", type=seed, default=0, help="seed of the random preset weights")
    group.add_argument("--runtime", default="torch", choices=SERVED_RUNTIMES,
                       help="runtime of the networks on each replica; onnxruntime exports the ONNX files first "
                            "(into --work-dir, reused while they match the model)")
    group.add_argument("--work-dir", default=None,
                       help="folder of the exported ONNX files (default outputs/runtimes/<model name>)")
    group = parser.add_argument_group("replicas and batching")
    group.add_argument("--replicas", type=_positive_int, default=1, help="pipeline replicas (one model each)")
    group.add_argument("--autoscale", type=_autoscale, default=None, metavar="MIN:MAX",
                       help="let Serve scale the pipeline replicas between MIN and MAX (overrides --replicas)")
    group.add_argument("--num-cpus", type=_num_cpus, default=0.25,
                       help="CPUs Ray reserves per pipeline replica (fractions let several replicas share cores)")
    group.add_argument("--max-batch", type=_positive_int, default=8, help="most requests per pipeline call")
    group.add_argument("--batch-wait", type=_seconds, default=0.05,
                       help="seconds a batch waits for more requests after its first one")
    group = parser.add_argument_group("Ray and HTTP")
    group.add_argument("--address", default=None,
                       help="join a running Ray cluster: 'auto' on one of its nodes, or ray://HEAD:10001 from "
                            "elsewhere (imagpose must be installed on every node); default: start Ray here")
    group.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (0.0.0.0: all)")
    group.add_argument("--port", type=int, default=8000, help="HTTP port")


def _number(parse, text: str, name: str):
    try:
        return parse(text)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a number, got {text!r}.") from None


@from_check
def _positive_int(text: str) -> int:
    return check_positive_int("the value", _number(int, text, "the value"))


@from_check
def _autoscale(text: str) -> tuple[int, int]:
    return parse_autoscale(text)


@from_check
def _num_cpus(text: str) -> float:
    return check_num_cpus(_number(float, text, "num_cpus"))


@from_check
def _seconds(text: str) -> float:
    return check_batch_wait(_number(float, text, "batch_wait"))


def run(args) -> int:
    import signal
    import threading

    from ..serving.ray_service import serve_pipeline

    # Ctrl-C and SIGTERM end the wait below; a background job starts with SIGINT ignored, so restore its handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    service = serve_pipeline(args.model, preset=args.preset, weights_seed=args.weights_seed, runtime=args.runtime,
                             work_dir=args.work_dir, replicas=args.replicas, autoscale=args.autoscale,
                             num_cpus=args.num_cpus, max_batch=args.max_batch, batch_wait=args.batch_wait,
                             address=args.address, host=args.host, port=args.port)
    try:
        replicas = (f"autoscaled {args.autoscale[0]}..{args.autoscale[1]}" if args.autoscale
                    else str(args.replicas))
        print(f"imagpose serve: {service.model} on {service.url} (ready in {service.start_seconds:.1f} s; replicas "
              f"{replicas}, {args.num_cpus:g} CPU each, batches of up to {args.max_batch}, wait {args.batch_wait:g} s, "
              f"runtime {args.runtime})", flush=True)
        print(f"  POST {service.url}/generate[?format=png]   GET {service.url}/healthz /readyz /stats /docs",
              flush=True)
        print("Ctrl-C stops the service.", flush=True)
        threading.Event().wait()  # until Ctrl-C or SIGTERM raises KeyboardInterrupt here
    except KeyboardInterrupt:
        print("imagpose serve: stopping ...", flush=True)
    finally:
        service.shutdown()
    print(f"imagpose serve: stopped in {service.stop_seconds:.1f} s.", flush=True)
    return 0
