"""The orchestrator's runtime: what the served networks take is checked before a request reaches them."""

import pytest
import torch

from imagpose.deepcache import check_deepcache_runtime
from imagpose.errors import InvalidArgumentError
from imagpose.export.components import COMPONENTS, deepcache_components
from imagpose.serving.triton.runtime import TritonModelRuntime


def test_a_call_outside_the_served_unet_rows_is_a_user_error_before_any_request():
    runtime = TritonModelRuntime(pb_utils=None, input_types={}, grid=(2, 2), unet_rows=(4, 4))
    with pytest.raises(InvalidArgumentError, match="takes 4 to 4 rows per call; this call needs 2"):
        runtime.unet(torch.zeros(2, 9, 8, 8), torch.zeros(1), None, None, (2, 2))


def test_the_deepcache_branches_are_those_whose_two_models_are_served():
    plain = TritonModelRuntime(pb_utils=None, input_types={}, grid=(2, 2))
    with pytest.raises(InvalidArgumentError, match="holds no DeepCache graphs, not branch 0"):
        check_deepcache_runtime(plain, 0)
    served = [*COMPONENTS, *deepcache_components((1, 2)), "unet_deepcache_full_b3"]  # branch 3: one of its pair
    runtime = TritonModelRuntime(pb_utils=None, input_types={}, grid=(2, 2), models={c: c for c in served})
    assert runtime.deepcache_branches() == {1, 2}
    check_deepcache_runtime(runtime, 2)
    with pytest.raises(InvalidArgumentError, match=r"holds branches \[1, 2\], not branch 3"):
        check_deepcache_runtime(runtime, 3)
