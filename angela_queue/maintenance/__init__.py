"""Reclaim, promote and prune.

Two kinds of caller:

* a supervisor, for its own workers: it is their parent, so it knows at
  once when one exits (``reclaim_exited_worker``) and judges when one is
  stuck (``reclaim_stuck_worker``);
* the maintenance leader (leader.py), for everything no live process
  answers for any more: workers whose heartbeat went stale because their
  host or whole process tree died, tasks left running by a worker that
  exited, supervisors that vanished; plus promotion of due scheduled tasks
  and pruning of old rows (``Maintenance.run``).

Every function is one guarded statement (see sql/maintenance.sql), safe to
run twice or from two hosts at once. Time-dependent ones take ``now`` so
tests move time instead of sleeping.

Hazard (outages): a heartbeat that could not be written is not a missed
heartbeat. After a database outage longer than a worker's dead_after_s,
every healthy worker's row looks dead until its next beat, and reclaiming
its tasks would run them twice. So the judgements on silence take
``healthy_for_s``: how long the caller has seen the database answer without
a gap (the supervisor tracks it; see ``Supervisor._db_healthy_for``). Silence
counts only within that window.
"""

from .lease import MAINTENANCE_LEASE, Lease
from .health import DbHealth
from .prune import PruneResult, prune, prune_tasks
from .reclaim import (Reclaimed, mark_lost_supervisors, reclaim_exited_worker, reclaim_lost_workers,
                      reclaim_stuck_worker)
from .rounds import Maintenance, promote_due

__all__ = ["MAINTENANCE_LEASE", "Lease", "DbHealth", "Maintenance", "PruneResult", "Reclaimed", "mark_lost_supervisors",
           "promote_due", "prune", "prune_tasks", "reclaim_exited_worker", "reclaim_lost_workers",
           "reclaim_stuck_worker"]
