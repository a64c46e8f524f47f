import pytest

from tinyvit import seed_everything


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    seed_everything(0)
