import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the test envs module, importable as `trpo_testenvs`

# A suite started in the background (`nohup ... &`, a non-interactive shell's `&`) inherits Ctrl-C ignored, and so
# would every `trpo` it starts: trpo rightly leaves an ignored SIGINT alone, and the tests that interrupt a run would
# see it go on. Ctrl-C is a Python handler here again, so the processes the tests start get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
