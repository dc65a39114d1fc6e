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


@pytest.fixture(scope="session")
def real_gguf():
    """The real Qwen2.5-Coder 0.5B Instruct GGUF (sha256-verified), which `make test` pulls once per
    machine into the user's data folder (registry.models.find). TRICODE_TEST_GGUF overrides it. Missing
    is a failure, not a skip: the tests that need the real model must run wherever the suite runs."""
    import os
    from pathlib import Path

    from registry.models import find
    env = os.environ.get("TRICODE_TEST_GGUF")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"TRICODE_TEST_GGUF={env} is not a file")
        return Path(env)
    path = find("qwen2.5-coder-0.5b")
    if path is None:
        pytest.fail("the real model qwen2.5-coder-0.5b is not pulled on this machine: run `make test` "
                    "(it pulls it once) or `python -m registry pull qwen2.5-coder-0.5b`")
    return path
