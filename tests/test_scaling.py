"""The supervisor's decisions as pure functions: no database, no processes."""

from __future__ import annotations

import datetime as dt
import re
import sys
import uuid

import pytest

from angela_queue.config import PROFILES, Settings, load_settings
from angela_queue.supervisor.scaling import (HealthLimits, Policy, Room, WorkerHealth, WorkerLoad, decide, depth_share,
                                  pick_retirees, progress_at, restart_delay, room, stuck_limit_s, stuck_reason)
from angela_queue.supervisor import describe_exit, worker_command, worker_environment

POLICY = Policy(min_workers=2, base_workers=4, max_workers=8)
ROOM = Room(True, "plenty")


# --- scaling steps ------------------------------------------------------------

def test_depth_above_ten_adds_one_worker():
    d = decide(4, 11, POLICY, ROOM)
    assert (d.target, d.change, d.action) == (5, 1, "up")
    assert "depth 11 > 10" in d.reason


def test_depth_of_exactly_ten_holds():
    d = decide(4, 10, POLICY, ROOM)
    assert (d.target, d.change) == (4, 0)


def test_depth_below_two_retires_one_worker():
    d = decide(4, 1, POLICY)
    assert (d.target, d.change, d.action) == (3, -1, "down")
    assert "< 2" in d.reason


def test_depth_of_two_holds():
    assert decide(4, 2, POLICY).change == 0


def test_never_above_max_nor_below_min():
    at_max = decide(8, 500, POLICY, ROOM)
    assert at_max.change == 0 and "maximum 8" in at_max.reason
    at_min = decide(2, 0, POLICY)
    assert at_min.change == 0 and "minimum 2" in at_min.reason


def test_out_of_bounds_pool_is_corrected_whatever_the_depth():
    assert decide(1, 50, POLICY, ROOM).target == 2
    assert decide(10, 50, POLICY, ROOM).target == 8


def test_no_room_blocks_scale_up_and_says_why():
    d = decide(4, 50, POLICY, Room(False, "only 100 MB of memory available (< 256 MB)"))
    assert d.change == 0
    assert "no room" in d.reason and "100 MB" in d.reason


def test_scale_up_then_down_walks_to_max_and_back_to_min():
    current, seen = 2, []
    for depth in [40] * 10 + [0] * 10:
        current = decide(current, depth, POLICY, ROOM).target
        seen.append(current)
    assert max(seen) == 8 and seen[-1] == 2
    assert all(abs(b - a) <= 1 for a, b in zip(seen, seen[1:]))  # one step per interval


def test_initial_workers_is_base_clamped_into_bounds():
    assert POLICY.initial_workers == 4
    assert Policy(min_workers=2, base_workers=9, max_workers=3).initial_workers == 3
    assert Policy(min_workers=2, base_workers=0, max_workers=3).initial_workers == 2


# --- several supervisors --------------------------------------------------------

def test_each_supervisor_sees_its_share_of_the_global_depth():
    assert depth_share(30, 1) == 30
    assert depth_share(30, 2) == 15
    assert depth_share(31, 2) == 16       # rounded up: no backlog is nobody's
    assert depth_share(5, 0) == 5         # never divide by zero


def test_two_supervisors_scale_on_twice_the_depth():
    # 15 waiting: one supervisor would add a worker; two supervisors each see 8.
    assert decide(4, depth_share(15, 1), POLICY, ROOM).change == 1
    assert decide(4, depth_share(15, 2), POLICY, ROOM).change == 0
    d = decide(4, depth_share(50, 2), POLICY, ROOM, global_depth=50, live_supervisors=2)
    assert d.change == 1 and "global 50 / 2 supervisors" in d.reason


def test_capped_depth_reads_as_at_least():
    assert "depth 1000+" in decide(4, 1000, POLICY, ROOM, capped=True).reason


# --- room ------------------------------------------------------------------------

def test_room_rule():
    assert room(4000, 50, min_free_mb=256, max_cpu_percent=95).ok
    low_memory = room(100, 10, min_free_mb=256, max_cpu_percent=95)
    assert not low_memory.ok and "memory" in low_memory.reason
    busy = room(4000, 97, min_free_mb=256, max_cpu_percent=95)
    assert not busy.ok and "CPU 97%" in busy.reason
    assert room(4000, None, min_free_mb=256, max_cpu_percent=95).ok   # not measured yet
    assert room(4000, 100, min_free_mb=256, max_cpu_percent=101).ok   # >100 disables the CPU rule


# --- retiring --------------------------------------------------------------------

def test_idle_workers_retire_first_newest_first():
    workers = [WorkerLoad("busy-old", 1, 1.0), WorkerLoad("idle-old", 0, 2.0),
               WorkerLoad("idle-new", 0, 3.0), WorkerLoad("busier", 3, 4.0)]
    assert pick_retirees(workers, 1) == ["idle-new"]
    assert pick_retirees(workers, 3) == ["idle-new", "idle-old", "busy-old"]
    assert pick_retirees(workers, 0) == []


# --- crash loops -----------------------------------------------------------------

def test_restart_delay_backs_off_after_repeated_quick_crashes():
    assert restart_delay(0) == 0 and restart_delay(1) == 0    # first replacement is immediate
    assert restart_delay(2) == 0.5 and restart_delay(3) == 1.0
    assert restart_delay(50) == 30.0


# --- stuck -------------------------------------------------------------------------

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
LIMITS = HealthLimits(stuck_after_s=60, heartbeat_interval_s=2, dead_after_s=30, batch_wait_s=2)


def health(*, active_ago: float, beat_ago: float = 1, kinds=("k",), timeouts=(None,), newest_ago=None,
           low=False) -> WorkerHealth:
    return WorkerHealth(last_heartbeat=T0 - dt.timedelta(seconds=beat_ago),
                        last_active=T0 - dt.timedelta(seconds=active_ago),
                        task_kinds=list(kinds), task_timeouts_s=list(timeouts),
                        newest_task_started_at=None if newest_ago is None else T0 - dt.timedelta(seconds=newest_ago),
                        holds_low_priority=low)


def test_worker_without_progress_past_stuck_after_is_stuck():
    # limit = 60 s + 2 heartbeats of slack (the row lags the process)
    assert stuck_reason(health(active_ago=63), T0, LIMITS) is None
    why = stuck_reason(health(active_ago=65), T0, LIMITS)
    assert why is not None and "no progress for 65.0s" in why and "limit 64s" in why


def test_idle_worker_is_never_stuck():
    assert stuck_reason(health(active_ago=3600, kinds=(), timeouts=()), T0, LIMITS) is None


def test_a_fresh_claim_counts_as_progress():
    # last_active is old (the heartbeat has not caught up), but a task was just claimed.
    w = health(active_ago=3600, newest_ago=1)
    assert progress_at(w) == T0 - dt.timedelta(seconds=1)
    assert stuck_reason(w, T0, LIMITS) is None


def test_the_tasks_own_timeout_replaces_stuck_after():
    short = health(active_ago=10, timeouts=(5.0,))
    assert stuck_limit_s(short, LIMITS) == 5 + 4
    assert stuck_reason(short, T0, LIMITS) is not None
    long = health(active_ago=100, timeouts=(600.0,))
    assert stuck_reason(long, T0, LIMITS) is None   # a long job is not stuck at 60 s


def test_handler_and_default_timeouts_apply_when_the_row_has_none():
    w = health(active_ago=100, kinds=("slow",))
    assert stuck_limit_s(w, LIMITS, lambda kind: 300.0 if kind == "slow" else None) == 304
    with_default = HealthLimits(stuck_after_s=60, heartbeat_interval_s=2, dead_after_s=30, default_timeout_s=10)
    assert stuck_limit_s(w, with_default) == 14


def test_the_most_lenient_task_sets_the_limit():
    w = health(active_ago=10, kinds=("a", "b"), timeouts=(5.0, None))
    assert stuck_limit_s(w, LIMITS) == 60 + 4


def test_low_priority_tasks_get_the_batch_wait_as_slack():
    assert stuck_limit_s(health(active_ago=0, low=True), LIMITS) == 60 + 4 + 2


def test_a_silent_heartbeat_is_stuck_even_when_idle():
    why = stuck_reason(health(active_ago=0, beat_ago=31, kinds=(), timeouts=()), T0, LIMITS)
    assert why is not None and "no heartbeat" in why


# --- settings and worker command ------------------------------------------------------

def test_profiles_apply_and_explicit_flags_override_them():
    low = load_settings({"profile": "low"}, environ={})
    p = PROFILES["low"]
    assert (low.base_workers, low.min_workers, low.max_workers, low.max_queue_size, low.scale_interval_s) == \
        (p.base_workers, p.min_workers, p.max_workers, p.max_queue_size, p.scale_interval_s) == (2, 2, 4, 20, 300)
    mixed = load_settings({"profile": "high", "max_workers": 5, "scale_interval_s": 1.5}, environ={})
    assert (mixed.base_workers, mixed.min_workers, mixed.max_workers, mixed.scale_interval_s) == (6, 4, 5, 1.5)
    assert Policy.from_settings(mixed).initial_workers == 5
    from_env = load_settings({"min_workers": 1}, environ={"ANGELA_QUEUE_PROFILE": "current",
                                                         "ANGELA_QUEUE_MIN_WORKERS": "3"})
    assert (from_env.max_workers, from_env.min_workers) == (6, 1)   # flag > env > profile


def test_workers_get_the_supervisors_resolved_settings_whole_and_no_dsn_in_argv():
    # Built in Python, not from flags: the workers must still register dead_after_s 10.
    settings = Settings(dsn="postgresql://u:secret@h/db", app="myapp", queues=("a", "b"), concurrency=3,
                        stuck_after_s=7.5, dead_after_s=10.0, heartbeat_interval_s=1.0)
    sid, wid = uuid.uuid4(), uuid.uuid4()
    cmd = worker_command(supervisor_id=sid, supervisor_pid=123, worker_id=wid)
    assert cmd[:4] == [sys.executable, "-m", "angela_queue", "worker"]
    joined = " ".join(cmd)
    assert f"--supervisor-id {sid}" in joined and "--supervisor-pid 123" in joined and f"--worker-id {wid}" in joined
    assert "secret" not in joined   # the DSN travels in the environment, not in argv (ps shows argv)
    env = worker_environment(settings, {"PATH": "/bin", "ANGELA_QUEUE_DEAD_AFTER": "99"})
    assert env["PATH"] == "/bin"
    # What the worker resolves is exactly what the supervisor resolved; the
    # environment's own ANGELA_QUEUE_* are not read a second time.
    assert load_settings({}, environ=env) == settings
    quiet = worker_command(supervisor_id=sid, supervisor_pid=1, worker_id=wid, log_level="WARNING")
    assert quiet[3:6] == ["--log-level", "WARNING", "worker"]   # a group option: before the command


def test_every_flag_has_a_variable_named_after_it_and_old_names_still_work():
    from angela_queue.config import OPTIONS
    by_flag = {o.flag: o for o in OPTIONS}
    assert by_flag["--scale-interval"].env == "ANGELA_QUEUE_SCALE_INTERVAL"
    assert by_flag["--max-workers"].env == "ANGELA_QUEUE_MAX_WORKERS"
    for option in OPTIONS:
        assert option.env.startswith("ANGELA_QUEUE_")
    assert load_settings({}, environ={"ANGELA_QUEUE_SCALE_INTERVAL": "5"}).scale_interval_s == 5
    assert load_settings({}, environ={"ANGELA_QUEUE_SCALE_INTERVAL_S": "6"}).scale_interval_s == 6   # alias
    both = {"ANGELA_QUEUE_SCALE_INTERVAL": "5", "ANGELA_QUEUE_SCALE_INTERVAL_S": "6"}
    assert load_settings({}, environ=both).scale_interval_s == 5                                      # flag's name wins
    assert load_settings({"scale_interval_s": 7}, environ=both).scale_interval_s == 7                 # flag > env


@pytest.mark.parametrize("values, message", [
    ({"heartbeat_interval_s": 40}, "--heartbeat-interval 40 is too long for --dead-after 30"),
    ({"heartbeat_interval_s": 5, "dead_after_s": 60, "stuck_after_s": 12}, "too long for --stuck-after 12"),
    ({"heartbeat_interval_s": 6, "leader_lease_s": 15}, "too long for ANGELA_QUEUE_LEADER_LEASE_S 15"),
    ({"concurrency": 0}, "--concurrency must be at least 1"),
    ({"dead_after_s": float("nan")}, "--dead-after must be a positive, finite number"),
])
def test_contradictory_or_impossible_settings_are_refused_naming_them(values, message):
    from angela_queue.errors import ConfigError
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(values, environ={})


def test_the_lease_follows_a_long_heartbeat_unless_set():
    assert load_settings({}, environ={}).lease_s == 15
    assert load_settings({"heartbeat_interval_s": 8, "dead_after_s": 30, "stuck_after_s": 60},
                         environ={}).lease_s == 24


@pytest.mark.parametrize("code, text", [(0, "exited cleanly"), (-9, "killed by SIGKILL"),
                                        (75, "retired itself"), (3, "exited with status 3")])
def test_exit_descriptions(code, text):
    assert text in describe_exit(code)
