"""`imagpose bench` refuses unknown method, setting and backend names (and impossible run counts) with one line
naming the valid choices, exit code 2, before any model is built or any file written."""

import pytest
import torch

from imagpose.cli import main


@pytest.mark.parametrize("flag,value,message", [
    ("--methods", "bogus", "Unknown method 'bogus'; choose from imagpose, imagpose_star, pidm, cfld, pocold, pcdms."),
    ("--methods", "pidm,PIDM", "Unknown method 'PIDM'; choose from imagpose, imagpose_star, pidm, cfld, pocold"),
    ("--methods", ",", "Unknown method (none given); choose from imagpose"),
    ("--settings", "fastest", "Unknown setting 'fastest'; choose from as_released, common_policy."),
    ("--fast-paths", "onnxruntime,cuda-graph", "Unknown fast path 'cuda-graph'; choose from eager, onnxruntime, "
                                               "tensorrt, triton-cva."),
    ("--backends", "onnxruntime,triton", "Unknown fast path 'triton'; choose from eager"),  # the former flag name
    ("--repeats", "0", "--warmup must be >= 0 and --repeats >= 1, got 1 and 0."),
    pytest.param("--device", "cuda", "--device cuda is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="checks the refusal of a device this machine lacks")),
])
def test_bad_names_are_refused(tmp_path, capsys, flag, value, message):
    out = tmp_path / "report"
    code = main(["bench", "--quick", "--no-parity", "--out", str(out), flag, value])
    err = capsys.readouterr().err
    print(err)
    assert code == 2
    assert err.startswith("imagpose bench: error: ") and message in err
    assert not out.exists()


def test_an_unwritable_out_is_refused_before_the_run(tmp_path, capsys):
    mine = tmp_path / "notes.md"
    mine.write_text("mine")
    code = main(["bench", "--quick", "--methods", "pidm", "--settings", "as_released", "--out", str(mine)])
    err = capsys.readouterr().err
    print(err)
    assert code == 2 and f"{mine} is a file" in err
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]
