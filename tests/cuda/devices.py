"""The cuda() device the tests run on: the real one, or with ``NEEDLE_TEST_CUDA_EMULATE=1``
the backend built as C++ with its kernels run on the CPU (tests/cuda/emulator.py)."""
import os

import pytest

import needle.backend_ndarray as nd


def cuda_device():
    if os.environ.get("NEEDLE_TEST_CUDA_EMULATE") == "1":
        from .emulator import use_emulated_cuda

        return use_emulated_cuda()
    return nd.cuda()


CUDA = cuda_device()
SKIP_REASON = ("ndl.cuda().enabled() is False: the CUDA module is not built or no GPU / driver is visible "
               "(device_count() == 0)")
#: a `device` parameter for backend tests that also run on cuda() (marked `cuda`, skipped without a GPU)
CUDA_PARAM = pytest.param(CUDA, id="cuda", marks=[pytest.mark.cuda,
                                                   pytest.mark.skipif(not CUDA.enabled(), reason=SKIP_REASON)])
