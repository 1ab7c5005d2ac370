"""Measure a running server under load: N concurrent clients send M requests (the shipped samples, distinct
seeds) through imagpose's client of the server (Triton or the Ray Serve service), then report throughput,
p50/p95/p99 latency, the batch sizes the server formed and the errors; writes results.json and loadtest.png into
--out. Triton's perf_analyzer cannot run from pip here (the PyPI package is an empty placeholder and the
tritonclient wheels carry no binary; it ships in NVIDIA's tritonserver *-py3-sdk container), so this command
measures both servers the same way. See docs/serving.md."""

from __future__ import annotations

from ..samplers import SAMPLERS
from ..sampling_config import SamplingConfig
from ..serving import SERVER_KINDS
from .argument_types import integer, model_folder, parse_size, sampling_setting, seed
from .common import add_output_argument

NAME = "loadtest"
HELP = "measure a running Triton or Ray Serve server: throughput, latency percentiles, batch sizes"


def add_arguments(parser) -> None:
    parser.add_argument("--server", required=True, metavar="URL",
                        help="the server: http://HOST:PORT (Triton HTTP or the Ray service) or grpc://HOST:PORT "
                             "(Triton gRPC)")
    parser.add_argument("--server-kind", "--kind", dest="server_kind", required=True, choices=SERVER_KINDS,
                        help="which server --server is (--kind: its former name)")
    parser.add_argument("--clients", type=integer(1), default=8, help="concurrent clients")
    parser.add_argument("--requests", type=integer(1), default=64, help="requests in total (distinct seeds)")
    parser.add_argument("--model", metavar="DIR", default=None, type=model_folder,
                        help="pipeline folder whose training record sets the request tile size (default: the shipped "
                             "model's, 128x96); the model itself is the server's")
    parser.add_argument("--tile-size", type=parse_size, default=None, metavar="HxW",
                        help="tile size of the requests (overrides --model's)")
    defaults = SamplingConfig()
    parser.add_argument("--steps", type=sampling_setting("num_inference_steps", int),
                        default=defaults.num_inference_steps, help="sampling steps of every request")
    parser.add_argument("--guidance", type=sampling_setting("guidance_scale", float),
                        default=defaults.guidance_scale, help="classifier-free guidance scale of every request")
    parser.add_argument("--sampler", default=defaults.sampler, choices=SAMPLERS,
                        help="sampler of every request (ddim: the official one)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the first request (the others: +1, +2, ...)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up request of each client")
    add_output_argument(parser, "outputs/loadtest")


def run(args) -> int:
    from pathlib import Path

    from ..io import OutputFolder
    from ..pretrained import shipped_model_dir, trained_tile_size
    from ..serving.load import format_table, run_load, sample_requests, write_report

    tile = args.tile_size or trained_tile_size(args.model or shipped_model_dir()) or (64, 64)
    sampling = SamplingConfig(args.steps, args.guidance, args.sampler)
    requests = sample_requests(args.requests, tile, seed=args.seed)
    with OutputFolder(args.out) as out:  # checked before the run; written when it succeeds
        print(f"imagpose loadtest: {args.requests} requests from {args.clients} clients to the {args.server_kind} "
              f"server at {args.server} ...", flush=True)
        report = run_load(args.server, args.server_kind, requests, sampling, args.clients, warmup=not args.no_warmup)
        write_report(report, out)
    print(format_table(report))
    print(f"results: {Path(args.out) / 'results.json'}, plot: {Path(args.out) / 'loadtest.png'}")
    return 0
