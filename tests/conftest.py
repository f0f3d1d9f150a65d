"""Shared pytest configuration: hypothesis profiles and the CPU-capability fixture.

Profiles (select with HYPOTHESIS_PROFILE; .ci/run sets `ci`, default `dev`):
  * dev: random, more examples, prints reproduction blobs.
  * ci:  derandomized (same examples every run, no flaky CI), bounded examples so the whole
         suite stays within a few minutes on 2 cores, no example database.
No deadline anywhere: timings on a shared 2-core machine are noise, and tests assert no timings.
"""

from __future__ import annotations

import os

import pytest
import torch

# torch's test utilities (tests/test_torch_optim_db.py imports them) register hypothesis profiles
# of their own, "dev" among them, and load one when first imported: imported after this file,
# they replaced ours for every test that reads the default settings (10 examples, no suppressed
# health checks). Imported first, so that the profile loaded below is the one the tests get.
import torch.testing._internal.common_utils  # noqa: F401, I001
from hypothesis import HealthCheck, settings

import pyoptim
from pyoptim import _ops

_COMMON = dict(
    deadline=None,
    # the `isa` fixture is function-scoped on purpose: it applies to every example alike
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
PROFILES = {
    "dev": dict(max_examples=40, print_blob=True, **_COMMON),
    "ci": dict(max_examples=12, derandomize=True, database=None, print_blob=True, **_COMMON),
}
for _name, _kwargs in PROFILES.items():
    settings.register_profile(_name, **_kwargs)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
settings.load_profile(PROFILE)

# Sparse tensors built by the tests are checked when built (torch's constructors otherwise skip
# the checks, with a warning): a test that means to pass a bad index says check_invariants=False.
torch.sparse.check_sparse_tensor_invariants.enable()

ISA_LEVELS = _ops.available_cpu_capabilities()

# tests/integration (Lightning, Hugging Face's Trainer) is `make test-integration`'s, which
# installs those packages and sets PYOPTIM_INTEGRATION=1; plain `pytest tests` leaves it out.
collect_ignore = [] if os.environ.get("PYOPTIM_INTEGRATION") else ["integration"]


@pytest.fixture(params=ISA_LEVELS, ids=lambda level: f"isa={level}")
def isa(request):
    """Run the test body with the CPU kernels at each level this CPU supports: the ops call that
    level's own kernel table (each ISA library reports its own level, so a dispatch that ran one
    table for every level fails here)."""
    with _ops.cpu_capability_override(request.param):
        assert pyoptim.cpu_capability() == request.param
        assert _ops.kernel_table_isa() == request.param
        yield request.param


@pytest.fixture
def restore_num_threads():
    """Tests that call torch.set_num_threads get the original count back afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread(restore_num_threads):
    """Class-level tests on tiny models: on a loaded 2-core machine a second intra-op thread only
    adds waiting (torch's small sparse ops took 50x longer with 2 threads than with 1). Results
    do not depend on the thread count (tests/test_isa_agreement.py and the *_across_* tests)."""
    torch.set_num_threads(1)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
