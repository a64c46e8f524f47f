import pytest
import torch

from tinyvit import seed_everything


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    seed_everything(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread: with two on a busy machine, small ops wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: skipped where there is none (as in CI). `pytest -m cuda` runs them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
