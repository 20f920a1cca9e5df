"""StopFlag: a stop request a signal handler can make while the main thread waits on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from angela_queue.stopflag import StopFlag

# The main thread waits on the flag in a tight loop while signals set it:
# with a threading.Event in its place the handler sooner or later waits for
# the lock its own thread holds, and the process hangs (the dashboard's
# rare hang on SIGTERM).
STORM = textwrap.dedent("""
    import signal, sys, time
    from angela_queue.stopflag import StopFlag
    flag = StopFlag(step_s=0.0001)
    seen = 0
    def handler(signum, frame):
        global seen
        seen += 1
        flag.set()
    signal.signal(signal.SIGUSR1, handler)
    print("ready", flush=True)
    while seen < int(sys.argv[1]):
        flag.wait(0.001)
        flag._set = False
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the test's last few, still on their way
    print("done", seen, flush=True)
""")


def test_a_signal_storm_never_blocks_the_handler():
    signals = 3000
    proc = subprocess.Popen([sys.executable, "-c", STORM, str(signals)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(signals):
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.0002)  # pacing: signals of one kind that arrive together merge into one
        # Merged signals may leave it short of the count (on a busy machine,
        # many more than the pacing hopes): finish it off, one signal a
        # millisecond, until it exits. A hung handler stops it from ever
        # exiting: that is the failure, reported, not waited on forever.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(0.001)
        assert proc.poll() is not None, "the process never finished counting: a signal handler blocked"
        out = proc.stdout.read()
        assert proc.returncode == 0
        assert out.startswith("done")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wait_returns_when_set_or_when_the_time_is_up():
    flag = StopFlag()
    assert flag.wait(0.01) is False and not flag.is_set()
    flag.set()
    assert flag.wait(5) is True and flag.wait(None) is True and flag.is_set()
