"""The ``imagpose`` model of a repository written by ``imagpose export triton``: wire-format requests in, results
out (``imagpose.serving.triton.orchestrator``). Needs imagpose installed in the Python backend's environment."""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from imagpose.serving.triton.orchestrator import Orchestrator


class TritonPythonModel:
    def initialize(self, args):
        self.orchestrator = Orchestrator(pb_utils, Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        return self.orchestrator.execute(requests)
