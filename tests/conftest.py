from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

# The tests use tiny tensors: thread start-up costs more than it saves, and one thread keeps results repeatable.
torch.set_num_threads(1)

#: The fused tests' Adafactor tests that compile kernels of their own (their own eps; the compatibility code path):
#: they share nothing with the others, so they need not wait for the group's worker.
OWN_KERNELS = ("test_small_tensors_with_the_same_last_two_dims_share_one_pack",
               "test_fused_without_torch_internals_equals_loop")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fused tests of Adafactor's shared configurations (tests/cases.py) with fp32 state run in one worker
    process, where they compile Adafactor's kernels once, not once per process (with pytest-xdist's
    --dist=loadgroup). The bf16-state ones compile other kernels (the state dtype is part of a kernel's key) and run
    wherever there is room: one group of all of them ran ~140 s in a row on one worker."""
    for item in items:
        if (item.module.__name__.endswith(("test_fused", "test_fused_kernels")) and "[adafactor" in item.name
                and "bf16-state" not in item.name and item.originalname not in OWN_KERNELS):
            item.add_marker(pytest.mark.xdist_group("fused-adafactor"))


#: The run's inductor cache, made by this process (None in an xdist worker, or where the caller chose one).
_INDUCTOR_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """One inductor cache for the whole run, empty at its start as on CI (a kernel cached by an earlier run cannot hide
    a compile failure), shared by pytest-xdist's workers and the fresh processes that tests start, which inherit the
    variable: a kernel compiled by one is read by the others, not compiled again. The controller (or a run without
    xdist) makes it before any worker starts; a ``TORCHINDUCTOR_CACHE_DIR`` set by the caller is kept (e.g. a warm
    cache for a quick re-run of a few tests)."""
    global _INDUCTOR_CACHE
    if "PYTEST_XDIST_WORKER" not in os.environ and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        _INDUCTOR_CACHE = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optarena-tests-inductor-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _INDUCTOR_CACHE is not None:
        shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)
