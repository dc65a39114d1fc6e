import pytest
import torch

from tests.tiny_checkpoint import write_tiny_checkpoint


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny random-weight NLD checkpoint (fp32) shared by the tests that only read it."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")
