"""Regenerate the shipped sample inputs with the synthetic people generator (imagpose.synthetic).

    python scripts/make_samples.py            # writes imagpose/assets/samples/{person_*.png, *.json, index.json}

Two looks ("red", "blue") x five poses, 256x176 (the paper's DeepFashion size), with exact OpenPose-18 keypoints.
Deterministic: re-running gives the same files.
"""

from __future__ import annotations

from pathlib import Path

from imagpose.synthetic.demo_samples import write_demo_samples

OUT = Path(__file__).resolve().parents[1] / "imagpose" / "assets" / "samples"

if __name__ == "__main__":
    names = write_demo_samples(OUT)
    print(f"{len(names)} samples -> {OUT}")
