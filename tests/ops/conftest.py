"""Fixtures of the op tests."""

import pytest
from support.backends import require_backend

from fastadv.backends import cpu_backend


@pytest.fixture(params=cpu_backend.CPU_ISAS)
def isa(request):
    """Runs the test under one build of the CPU loop (skipped where this CPU cannot run it)."""
    require_backend("cpu", "cpu")
    if request.param not in cpu_backend.cpu_isas():
        pytest.skip(f"this CPU cannot run the {request.param} build")
    with cpu_backend.use_cpu_isa(request.param):
        assert cpu_backend.cpu_isa() == request.param
        yield request.param
