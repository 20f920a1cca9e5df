"""The worker process: claim tasks in effective-priority order, run them, record the outcomes.

``loop.py`` is the process and its turn; ``execution.py`` runs one claimed
task (or batch) through its handler and returns a complete outcome;
``handler_threads.py`` runs sync handlers.
"""

from .loop import EXIT_RETIRE, Worker, poll_interval, set_parent_death_signal

__all__ = ["EXIT_RETIRE", "Worker", "poll_interval", "set_parent_death_signal"]
