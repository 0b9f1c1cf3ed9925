"""Shared fixtures of the Python tests: fresh generators, poisoned outputs, the GPU gate."""

import pytest
import torch

import reference_moe


@pytest.fixture
def generator():
    """A freshly seeded generator per test (its seed appears in failure messages)."""
    return reference_moe.fresh_generator()


def has_hopper() -> bool:
    """True when a CUDA device of compute capability 9.0 (the kernels' sm_90a target) is present."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0) == (9, 0)


requires_hopper = pytest.mark.skipif(not has_hopper(), reason="needs a Hopper (sm_90) CUDA GPU")


def poison(tensor: torch.Tensor) -> torch.Tensor:
    """Fills an output tensor with values no correct run produces (NaN, or -7 for integers)."""
    if tensor.is_floating_point():
        return tensor.fill_(float("nan"))
    return tensor.fill_(-7)
