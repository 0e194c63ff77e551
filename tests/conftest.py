import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test envs module, importable as `trpo_testenvs`

# A suite started in the background (`nohup ... &`, a non-interactive shell's `&`) inherits Ctrl-C ignored, and so
# would every `trpo` it starts: trpo rightly leaves an ignored SIGINT alone, and the tests that interrupt a run would
# see it go on. Ctrl-C is a Python handler here again, so the processes the tests start get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def float64() -> Iterator[None]:
    """Exact comparisons need double precision: torch's default dtype float64 for the test, restored after it (a
    module takes it for every test with `pytestmark = [..., pytest.mark.usefixtures("float64")]`)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
