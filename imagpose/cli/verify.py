"""Check our implementation against tensors made by the official IMAGPose code. FIXTURE_DIR is one fixture
folder (unet, pipeline or manifest layout) or a folder of them. Official weights go through the converter;
prints max abs / max rel error per output and PASS/FAIL (float rtol=atol=1e-4, PNG within 1 level, ints
exact). Exits 1 on any FAIL."""

from __future__ import annotations

import time

NAME = "verify-official"
HELP = "verify against official-code fixtures (shared/fixtures/official layout)"


def add_arguments(parser) -> None:
    parser.add_argument("fixture_dir", metavar="FIXTURE_DIR", help="a fixture folder or a folder of fixture folders")
    parser.add_argument("--attention-backend", default="eager", help="CVA attention backend to verify")


def run(args) -> int:
    from ..models.attention import get_cva_backend
    from ..verify import find_fixtures, verify_fixture

    get_cva_backend(args.attention_backend)  # an unknown or uninstalled backend fails before any fixture runs
    failed = 0
    for folder in find_fixtures(args.fixture_dir):
        start = time.perf_counter()
        report = verify_fixture(folder, attention_backend=args.attention_backend)
        print(report.format())
        print(f"({time.perf_counter() - start:.1f} s)\n")
        failed += not report.passed
    print("verify-official: " + ("all fixtures PASS" if not failed else f"{failed} fixture(s) FAIL"))
    return 1 if failed else 0
