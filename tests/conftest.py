import pytest
import torch

# The tests use tiny tensors: thread start-up costs more than it saves, and one thread keeps results repeatable.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fused tests of Adafactor's shared configurations (tests/cases.py) run in one worker process, where they
    compile Adafactor's kernels once, not once per process (with pytest-xdist's --dist=loadgroup)."""
    for item in items:
        if item.module.__name__.endswith("test_fused") and "[adafactor" in item.name:
            item.add_marker(pytest.mark.xdist_group("fused-adafactor"))
