import os
import time
import uuid

import pytest
import torch

from tests import daemon_guard
from tests.tiny_checkpoint import write_tiny_checkpoint


def pytest_configure(config):
    # this session's mark, inherited by every process the tests start (tests/daemon_guard.py)
    os.environ[daemon_guard.MARK] = uuid.uuid4().hex


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    os.environ[daemon_guard.TEST] = item.nodeid      # names the test in the leak guard's message
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_daemon_left_running():
    """After the whole session (every fixture torn down): no `tricode daemon run` started by this
    session may still run. A leak is stopped (it is ours) and fails the session loudly, naming the test
    that started it, so that a fixture that forgets its daemon is fixed rather than noticed days later."""
    yield
    session = os.environ[daemon_guard.MARK]
    end = time.monotonic() + 10          # a daemon just sent SIGTERM is allowed to finish exiting
    left = daemon_guard.session_daemons(session)
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = daemon_guard.session_daemons(session)
    for d in left:
        daemon_guard.stop_pid(d["pid"])
    if left:
        pytest.fail("tests left tricode daemons running (stopped now; fix the fixture that started them): "
                    + "; ".join(f"pid {d['pid']} started in {d['test']}, socket {d['socket'] or '-'}, "
                                f"runtime dir {d['runtime_dir'] or '-'}" for d in left), pytrace=False)


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
