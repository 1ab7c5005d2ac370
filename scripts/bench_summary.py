"""Print medians and torch/ONNX Runtime ratios from a pytest-benchmark JSON (``make bench``)."""

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor'))}, "
          f"{machine.get('cpu', {}).get('count', '?')} cores")
    rows = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "preset" not in info:  # other benchmark groups (methods-one-step) are in pytest-benchmark's table
            continue
        rows[info["preset"]][info["backend"]] = (bench["stats"]["median"], info["sample_shape"])
    print(f"{'preset':<8}{'sample':<20}{'torch ms':>10}{'ORT ms':>10}{'torch/ORT':>11}")
    for preset, by_backend in rows.items():
        torch_ms, shape = by_backend["torch"]
        ort_ms, _ = by_backend["onnxruntime"]
        print(f"{preset:<8}{'x'.join(map(str, shape)):<20}{torch_ms * 1e3:>10.1f}{ort_ms * 1e3:>10.1f}"
              f"{torch_ms / ort_ms:>11.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/bench/pytest_benchmark.json")  # where `make bench` writes it
