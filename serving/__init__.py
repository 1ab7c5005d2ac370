"""imagpose.serving: the pipeline on existing serving engines.

    wire             the JSON form of a request and a result, shared by every server and client
    triton           a Triton Inference Server model repository (networks + an orchestrator model) and its client
    ray_service      an HTTP service on Ray Serve, batching requests into the pipeline's batched call
    ray_client       the client of that service (RayServeClient, a GenerationClient)
    load             load measurement of either server (imagpose loadtest)

Import-light: tritonclient and Ray are imported by the modules that need them.
"""

SERVER_KINDS = ("triton", "ray")  # the servers a client can talk to (`--server-kind`, serving.connect.connect)


def __getattr__(name: str):
    # TritonClient is exported lazily: tritonclient is imported only when it is used
    if name == "TritonClient":
        from .triton.client import TritonClient

        return TritonClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
