"""The supervisor (``angela-queue run``): worker processes scaled to the load and kept healthy.

``run.py`` is the process; ``scaling.py`` holds its decisions as pure functions.
"""

from .run import Supervisor, describe_exit, kill_tree, worker_command, worker_environment

__all__ = ["Supervisor", "describe_exit", "kill_tree", "worker_command", "worker_environment"]
