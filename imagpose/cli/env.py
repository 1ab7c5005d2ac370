"""Print the versions and devices imagpose sees (paste this into bug reports and benchmark notes)."""

from __future__ import annotations

import importlib
import os
import platform

NAME = "env"
HELP = "print library versions and devices"
PACKAGES = ("imagpose", "torch", "diffusers", "transformers", "safetensors", "accelerate", "numpy", "PIL", "cv2",
            "onnx", "onnxruntime", "onnxscript", "triton", "tensorrt", "xformers")


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def collect() -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            info[name] = getattr(module, "__version__", "installed")
        except Exception as exc:  # any import failure means "not usable here"
            info[name] = f"not available ({type(exc).__name__})"
    info["torch_threads"] = torch.get_num_threads()
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def run(args) -> int:
    import json

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0
