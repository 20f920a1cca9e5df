"""``angela-queue demo``: the plan's workload on a live supervisor and dashboard.

* ``workload.py``: the seeded generator of the mix (pure);
* ``handlers.py``: the kinds it enqueues, run by the supervisor's workers;
* ``runner.py``: the demo process (children, readiness, the generator loop, a clean stop).
"""

from .runner import Demo, DemoError
from .workload import Arrival, Workload

__all__ = ["Arrival", "Demo", "DemoError", "Workload"]
