"""The settings of the Ray Serve service (:mod:`imagpose.serving.ray_service`), import-light so the command line
checks them while it parses, before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imagpose.errors import InvalidArgumentError
from imagpose.runtime import RUNTIMES

SERVED_RUNTIMES = tuple(name for name in RUNTIMES if name != "tensorrt")  # the replicas build no engines


@dataclass(frozen=True)
class ServiceConfig:
    """What every pipeline replica loads and how it batches.

    ``model_dir`` None and ``preset`` None: the shipped trained model (:mod:`imagpose.pretrained`), resolved on the
    replica's node. ``work_dir``: where the ONNX files of ``runtime="onnxruntime"`` go (default
    ``outputs/runtimes/<model name>``, absolute, so every replica of this machine reuses one export).
    """

    model_dir: str | None = None
    preset: str | None = None
    weights_seed: int = 0
    runtime: str = "torch"
    work_dir: str | None = None
    max_batch: int = 8
    batch_wait: float = 0.05

    def check(self) -> ServiceConfig:
        if self.runtime not in SERVED_RUNTIMES:
            raise InvalidArgumentError(f"runtime {self.runtime!r} is unknown; choose from "
                                       f"{', '.join(SERVED_RUNTIMES)}.")
        if self.model_dir is not None and not (Path(self.model_dir) / "model_index.json").is_file():
            raise InvalidArgumentError(f"{self.model_dir} is not a pipeline folder (no model_index.json); pass a "
                                       "folder written by IMAGPosePipeline.save_pretrained or `imagpose convert`.")
        check_positive_int("max_batch", self.max_batch)
        check_batch_wait(self.batch_wait)
        return self

    @property
    def model_name(self) -> str:
        from imagpose.pretrained import SHIPPED_MODEL

        if self.model_dir is not None:
            return Path(self.model_dir).name
        return f"{self.preset} (random weights, seed {self.weights_seed})" if self.preset else SHIPPED_MODEL


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def parse_autoscale(text: str) -> tuple[int, int]:
    """'1:4' -> (1, 4): the fewest and most pipeline replicas."""
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        low = high = -1
    if low < 0 or high < 1 or low > high:
        raise InvalidArgumentError(f"autoscale must be MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, e.g. 1:4, "
                                   f"got {text!r}.")
    return low, high


def check_num_cpus(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1024:
        raise InvalidArgumentError(f"num_cpus must be a positive number of CPUs per replica (fractions such as 0.25 "
                                   f"are fine), got {value!r}.")
    return float(value)


def check_batch_wait(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 60:
        raise InvalidArgumentError(f"batch_wait must be a number of seconds in [0, 60), got {value!r}.")
    return float(value)
