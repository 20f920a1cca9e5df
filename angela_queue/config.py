"""Settings: one frozen object, resolved once, then handed to constructors.

Precedence, highest first: explicit flag > ``ANGELA_QUEUE_*`` environment >
profile > default. This module is the only reader of ``os.environ``: the CLI
builds its flags from ``OPTIONS`` below and passes what was typed; the
environment is parsed here, once, by one parser.

Every flag has an environment variable named after it (``--scale-interval``
-> ``ANGELA_QUEUE_SCALE_INTERVAL``). The names of earlier releases, built from
the field (``ANGELA_QUEUE_SCALE_INTERVAL_S``), still work as aliases; when
both are set, the flag's name wins.

A supervisor hands its resolved Settings to the workers it spawns in
``ANGELA_QUEUE_SETTINGS`` (JSON), so a worker runs with exactly what its
supervisor resolved, whether that came from flags, the environment or a
``Settings`` built in Python.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

from .errors import ConfigError

ENV_PREFIX = "ANGELA_QUEUE_"
# The resolved Settings a supervisor hands to its workers (JSON).
HANDOFF_ENV = ENV_PREFIX + "SETTINGS"

# Task defaults (the SQL column defaults agree with these).
DEFAULT_PRIORITY = 5
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_QUEUE = "default"

# Overflow: how long a priority >= 5 enqueue waits for space in a full queue.
ENQUEUE_FULL_WAIT_S = 5.0

# A worker's critical slots (--critical-slots) are extra tasks at once: a few.
MAX_CRITICAL_SLOTS = 100

# NOTIFY channels (payload: the queue name).
CHANNEL_INSERT = "angela_queue_insert"
CHANNEL_SPACE = "angela_queue_space"
# Also sent when a statement queues a critical task (priority >= 9): it wakes
# workers whose ordinary slots are all busy to fill their critical slot.
CHANNEL_CRITICAL = "angela_queue_critical"
# Payload: the id of a running task that was asked to stop.
CHANNEL_CANCEL = "angela_queue_cancel"
# Tasks reached a final status (angela_queue.notify_done): ids, comma-separated, or "*".
CHANNEL_DONE = "angela_queue_done"

# A heartbeat must fit this many times into the limits that judge it, or a
# healthy worker can look dead or stuck between two beats.
HEARTBEATS_PER_LIMIT = 3
# Failed rows (the dead letters) are kept at least this long by default.
FAILED_RETENTION_DEFAULT_S = 30 * 24 * 3600.0
# The shortest intervals that make sense: below them a worker or a
# supervisor spends its CPU (and the database's) on beating and polling.
MIN_INTERVAL_S = {"poll_fast_s": 0.01, "poll_medium_s": 0.01, "poll_slow_s": 0.01,
                  "heartbeat_interval_s": 0.05, "scale_interval_s": 0.1}


def default_max_workers() -> int:
    """The plan's ceiling: 8, or 80% of the CPU cores if that is fewer; never
    below the plan's minimum of 2 workers (80% of 2 cores would be 1)."""
    cores = psutil.cpu_count(logical=True) or 1
    return max(2, min(8, int(cores * 0.8)))


@dataclass(frozen=True)
class Profile:
    name: str
    base_workers: int
    min_workers: int
    max_workers: int
    max_queue_size: int | None
    scale_interval_s: float


# The plan's three profiles. "default" is not a profile from the plan: it is
# what runs with no --profile (min 2, base 4, max 8 or 80% of cores, 30 s).
PROFILES: dict[str, Profile] = {
    "low": Profile("low", base_workers=2, min_workers=2, max_workers=4, max_queue_size=20, scale_interval_s=300),
    "current": Profile("current", base_workers=4, min_workers=2, max_workers=6, max_queue_size=50, scale_interval_s=60),
    "high": Profile("high", base_workers=6, min_workers=4, max_workers=8, max_queue_size=100, scale_interval_s=30),
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CLAIM_COMMITS = ("durable", "fast")


@dataclass(frozen=True)
class Settings:
    dsn: str | None = None
    # The module whose @task handlers workers run.
    app: str | None = None
    log_level: str = "INFO"
    # text (lines for people) or json (one object per line: logs.py).
    log_format: str = "text"
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)

    # Worker
    concurrency: int = 1
    # Slots beside those that only critical tasks (effective priority >= 9)
    # may take, so one starts at once while every other slot is busy
    # (worker/slots.py). 0: none. Three, not one: critical tasks come in
    # bursts, and a critical task finds every critical slot busy about as
    # often as Erlang's loss formula says. At 30 critical 20 ms jobs a second
    # (0.6 of a slot's time) one slot is busy for 38% of arrivals, which then
    # wait for some slot to free (p99 17 ms measured); three are all busy for
    # 2% (p99 7 ms).
    critical_slots: int = 3
    batch_size: int = 5
    batch_wait_s: float = 2.0
    poll_fast_s: float = 0.1    # depth > 20
    poll_medium_s: float = 0.5  # depth > 5
    poll_slow_s: float = 1.0    # otherwise
    heartbeat_interval_s: float = 2.0
    stuck_after_s: float = 60.0
    dead_after_s: float = 30.0
    default_timeout_s: float | None = None
    shutdown_grace_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 3600.0
    # How a claim that is its transaction's only write commits. durable: it
    # waits for the WAL flush like every other write. fast: it does not, and
    # an idle worker starts a task 0.2-0.4 ms sooner; a database crash may
    # then lose a claim made in its last moments, and its task runs a second
    # time with the attempt not counted, where a durable claim would have
    # let the surviving worker record its outcome, and the two runs may
    # overlap past the kind's limits (the chaos run saw it: one task in
    # 5,000 over 9 restarts). See sql/tasks.sql.
    claim_commit: str = "durable"

    # Supervisor
    profile: str | None = None
    min_workers: int = 2
    base_workers: int = 4
    max_workers: int = field(default_factory=default_max_workers)
    scale_up_depth: int = 10
    scale_down_depth: int = 2
    scale_interval_s: float = 30.0
    max_queue_size: int | None = None
    # Prometheus /metrics of the supervisor (None: not served).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Room check before adding a worker: below this much available memory, or
    # with the CPU this busy over the last scale interval, no worker is added.
    room_min_free_memory_mb: float = 256.0
    room_max_cpu_percent: float = 95.0

    # Maintenance (the leader: a supervisor, or a standalone worker)
    retention_s: float = 7 * 24 * 3600.0
    # Failed rows are the dead-letter record: kept longer than the rest.
    # None: 30 days, or the retention of the rest if that is longer.
    retention_failed_s: float | None = None
    # Seconds a maintenance leader's lease lasts unless renewed (it renews
    # every heartbeat). None: 15 s, or three heartbeats if that is longer.
    leader_lease_s: float | None = None

    # Dashboard
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8080
    # The bearer token the dashboard's actions require (from the environment
    # only, ANGELA_QUEUE_DASHBOARD_TOKEN: a flag would show in `ps`). None:
    # generated at start and printed in the URL. Kept out of repr (logs).
    dashboard_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def failed_retention_s(self) -> float:
        if self.retention_failed_s is not None:
            return self.retention_failed_s
        return max(FAILED_RETENTION_DEFAULT_S, self.retention_s)

    @property
    def lease_s(self) -> float:
        if self.leader_lease_s is not None:
            return self.leader_lease_s
        return max(15.0, HEARTBEATS_PER_LIMIT * self.heartbeat_interval_s)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The resolved settings, for a worker process (see HANDOFF_ENV)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        try:
            values = json.loads(text)
            values["queues"] = tuple(values["queues"])
            return cls(**values)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{HANDOFF_ENV} does not hold valid settings: {exc}") from None


@dataclass(frozen=True)
class Option:
    """One setting as the CLI shows it: its flag, where it applies, its help."""

    field: str
    flag: str
    help: str
    # worker: `worker` and `run`; supervisor: `run`; maintenance: `worker` and
    # `run` (the leader may be either); dashboard: `dashboard`.
    scope: str
    # A click.Choice for this option, if any.
    choices: tuple[str, ...] | None = None
    # The variable's name when the flag's own would be ambiguous (--host).
    env_name: str | None = None

    @property
    def env(self) -> str:
        """The environment variable named after the flag: --scale-interval -> ANGELA_QUEUE_SCALE_INTERVAL."""
        return self.env_name or ENV_PREFIX + self.flag.lstrip("-").upper().replace("-", "_")

    @property
    def env_names(self) -> tuple[str, ...]:
        """The flag's variable first, then the field's (the name of earlier releases)."""
        legacy = ENV_PREFIX + self.field.upper()
        return (self.env,) if legacy == self.env else (self.env, legacy)


OPTIONS: tuple[Option, ...] = (
    Option("app", "--app", "Module to import; its @task decorators register the handlers.", "worker"),
    Option("queues", "--queue", "Queue to serve (repeat, or comma-separate, for several). Default: 'default'.",
           "worker"),
    Option("concurrency", "--concurrency", "Tasks at once per worker process (default 1).", "worker"),
    Option("critical_slots", "--critical-slots",
           "Extra slots per worker that only critical tasks (priority >= 9) take, so they start at once while "
           "every other slot is busy (default 3; 0: none).", "worker"),
    Option("batch_size", "--batch-size", "Low-priority (< 5) tasks of one kind claimed together (default 5).",
           "worker"),
    Option("batch_wait_s", "--batch-wait", "Seconds a low-priority batch waits to fill (default 2).", "worker"),
    Option("default_timeout_s", "--default-timeout",
           "Seconds a task may run when neither it nor its handler sets a timeout.", "worker"),
    Option("shutdown_grace_s", "--shutdown-grace",
           "Seconds running tasks get to finish on SIGTERM before they are released (default 30).", "worker"),
    Option("heartbeat_interval_s", "--heartbeat-interval",
           "Seconds between heartbeats (default 2; at most a third of --dead-after and --stuck-after).", "worker"),
    Option("poll_slow_s", "--poll-interval",
           "Idle poll backstop in seconds (default 1.0; NOTIFY wakes workers sooner).", "worker"),
    Option("stuck_after_s", "--stuck-after", "Seconds without progress before a worker is stuck (default 60).",
           "worker"),
    Option("dead_after_s", "--dead-after",
           "Seconds without a heartbeat before a worker or supervisor counts as dead (default 30).", "worker"),
    Option("backoff_base_s", "--backoff-base", "First retry delay in seconds, doubling per attempt (default 1).",
           "worker"),
    Option("backoff_max_s", "--backoff-max", "Longest retry delay in seconds (default 3600).", "worker"),
    Option("claim_commit", "--claim-commit",
           "durable (default): claims wait for the disk like every write. fast: a claim alone in its "
           "transaction does not (an idle worker starts tasks sooner); a database crash may then lose it, and "
           "its task runs again with the attempt not counted.", "worker", choices=CLAIM_COMMITS),
    Option("retention_s", "--retention",
           "Seconds finished tasks are kept before the leader prunes them (default 7 days).", "maintenance"),
    Option("retention_failed_s", "--retention-failed",
           "Seconds failed tasks (the dead letters) are kept (default 30 days, or --retention if longer).",
           "maintenance"),
    Option("profile", "--profile",
           "The plan's profiles: low (2/2/4 workers, queue 20, every 300s), current (4/2/6, 50, 60s), "
           "high (6/4/8, 100, 30s). Explicit flags override it.", "supervisor", choices=tuple(PROFILES)),
    Option("min_workers", "--min-workers", "Never fewer worker processes (default 2).", "supervisor"),
    Option("max_workers", "--max-workers", "Never more worker processes (default 8, or 80% of the cores).",
           "supervisor"),
    Option("base_workers", "--base-workers", "Workers to start with (default 4, kept within min and max).",
           "supervisor"),
    Option("scale_interval_s", "--scale-interval", "Seconds between scaling checks (default 30).", "supervisor"),
    Option("scale_up_depth", "--scale-up-depth", "Add a worker when this supervisor's share of the depth is "
           "above this (default 10).", "supervisor"),
    Option("scale_down_depth", "--scale-down-depth", "Retire a worker when the share is below this (default 2).",
           "supervisor"),
    Option("max_queue_size", "--max-queue-size",
           "Bound the served queues to this many waiting tasks (the profile's by default). Written into "
           "angela_queue.queues: it stays after the supervisor exits.", "supervisor"),
    Option("metrics_port", "--metrics-port",
           "Serve Prometheus /metrics on this port (the queue's, and this supervisor's decisions).", "supervisor"),
    Option("metrics_host", "--metrics-host", "Address /metrics listens on (default 127.0.0.1).", "supervisor"),
    Option("dashboard_host", "--host", "Address the dashboard listens on.", "dashboard",
           env_name=ENV_PREFIX + "DASHBOARD_HOST"),
    Option("dashboard_port", "--port", "Port the dashboard listens on; 0 picks a free one.", "dashboard",
           env_name=ENV_PREFIX + "DASHBOARD_PORT"),
)

OPTIONS_BY_FIELD = {o.field: o for o in OPTIONS}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


def describe_setting(name: str) -> str:
    """How users know a setting: its flag (``--dead-after``), or its variable if it has no flag."""
    option = OPTIONS_BY_FIELD.get(name)
    return option.flag if option else ENV_PREFIX + name.upper()


def _problems(s: Settings) -> list[str]:
    problems = []

    def bad(name: str, why: str) -> None:
        problems.append(f"{describe_setting(name)} {why} (got {getattr(s, name)!r})")

    for name in ("concurrency", "batch_size", "max_workers"):
        if getattr(s, name) < 1:
            bad(name, "must be at least 1")
    if not 0 <= s.critical_slots <= MAX_CRITICAL_SLOTS:
        bad("critical_slots", f"must be a whole number from 0 to {MAX_CRITICAL_SLOTS}")
    for name in ("min_workers", "base_workers", "scale_down_depth", "scale_up_depth"):
        if getattr(s, name) < 0:
            bad(name, "must not be negative")
    if not s.queues or any(not isinstance(q, str) or not q.strip() for q in s.queues):
        problems.append(f"--queue must name non-empty queues (got {list(s.queues)})")
    if s.min_workers > s.max_workers:
        problems.append(f"--min-workers ({s.min_workers}) exceeds --max-workers ({s.max_workers})")
    for name in ("poll_fast_s", "poll_medium_s", "poll_slow_s", "heartbeat_interval_s", "stuck_after_s",
                 "dead_after_s", "scale_interval_s", "retention_s",
                 "backoff_base_s", "backoff_max_s"):
        value = getattr(s, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            bad(name, "must be a positive, finite number of seconds")
        elif value < MIN_INTERVAL_S.get(name, 0):
            bad(name, f"must be at least {MIN_INTERVAL_S[name]:g} seconds")
    if s.retention_failed_s is not None and not (math.isfinite(s.retention_failed_s) and s.retention_failed_s > 0):
        bad("retention_failed_s", "must be a positive, finite number of seconds")
    for name in ("batch_wait_s", "shutdown_grace_s"):
        value = getattr(s, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            bad(name, "must be a finite number of seconds, 0 or more")
    if s.leader_lease_s is not None and not (math.isfinite(s.leader_lease_s) and s.leader_lease_s > 0):
        bad("leader_lease_s", "must be a positive, finite number of seconds")
    if s.default_timeout_s is not None and not (math.isfinite(s.default_timeout_s) and s.default_timeout_s > 0):
        bad("default_timeout_s", "must be a positive, finite number of seconds")
    if s.max_queue_size is not None and s.max_queue_size < 0:
        bad("max_queue_size", "must not be negative")
    if s.profile is not None and s.profile not in PROFILES:
        problems.append(f"unknown --profile {s.profile!r}; choose one of {', '.join(PROFILES)}")
    if s.claim_commit not in CLAIM_COMMITS:
        bad("claim_commit", f"must be {' or '.join(CLAIM_COMMITS)}")
    if s.log_format not in ("text", "json"):
        problems.append(f"--log-format must be text or json (got {s.log_format!r})")
    if s.metrics_port is not None and not 0 <= s.metrics_port <= 65535:
        problems.append(f"--metrics-port must be a port number, 0-65535 (got {s.metrics_port})")
    if s.log_level.upper() not in LOG_LEVELS:
        problems.append(f"--log-level must be one of {', '.join(LOG_LEVELS)} (got {s.log_level!r})")
    if not 0 <= s.dashboard_port <= 65535:
        bad("dashboard_port", "must be between 0 and 65535")
    if not problems:
        # Contradictions: a heartbeat judged by a limit it barely fits in
        # makes healthy workers look dead (their tasks run twice) or stuck.
        beat = s.heartbeat_interval_s
        for name in ("dead_after_s", "stuck_after_s", "leader_lease_s"):
            limit = getattr(s, name)
            if limit is None:
                continue
            if beat * HEARTBEATS_PER_LIMIT > limit:
                problems.append(
                    f"--heartbeat-interval {beat:g} is too long for {describe_setting(name)} {limit:g}: a "
                    f"heartbeat must fit at least {HEARTBEATS_PER_LIMIT} times into it (raise "
                    f"{describe_setting(name)} to {beat * HEARTBEATS_PER_LIMIT:g} or more, or beat more often)")
    return problems


def _parse(name: str, raw: str, source: str):
    kind = _FIELD_TYPES[name]
    optional = "None" in kind
    text = raw.strip()
    try:
        if name == "queues":
            return tuple(q.strip() for q in raw.split(",") if q.strip())
        if optional and text.lower() in ("", "none"):
            return None
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        return raw
    except ValueError:
        expected = "an integer" if kind.startswith("int") else "a finite number"
        raise ConfigError(f"{source}={raw!r} is not {expected}") from None


def from_env(environ: Mapping[str, str] | None = None) -> dict:
    """Settings fields given by ANGELA_QUEUE_* variables (the DSN also from DATABASE_URL)."""
    environ = os.environ if environ is None else environ
    found: dict = {}
    for name in _FIELD_TYPES:
        option = OPTIONS_BY_FIELD.get(name)
        names = option.env_names if option else (ENV_PREFIX + name.upper(),)
        for env_name in names:
            raw = environ.get(env_name)
            if raw is not None:
                found[name] = _parse(name, raw, env_name)
                break
    if "dsn" not in found and environ.get("DATABASE_URL"):
        found["dsn"] = environ["DATABASE_URL"]
    return found


def load_settings(flags: Mapping | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings: flags (None = not given) > environment > profile > defaults.

    A worker spawned by a supervisor finds the supervisor's resolved Settings
    in ANGELA_QUEUE_SETTINGS and takes them whole (its flags still win).
    """
    environ = os.environ if environ is None else environ
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(given) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    handoff = environ.get(HANDOFF_ENV)
    if handoff:
        return Settings.from_json(handoff).replace(**given)
    values: dict = {}
    env = from_env(environ)
    profile_name = given.get("profile", env.get("profile"))
    if profile_name is not None:
        if profile_name not in PROFILES:
            raise ConfigError(f"unknown --profile {profile_name!r}; choose one of {', '.join(PROFILES)}")
        p = PROFILES[profile_name]
        values.update(base_workers=p.base_workers, min_workers=p.min_workers, max_workers=p.max_workers,
                      max_queue_size=p.max_queue_size, scale_interval_s=p.scale_interval_s)
    values.update(env)
    values.update(given)
    return Settings(**values)


def dsn_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """ANGELA_QUEUE_DSN, then DATABASE_URL, else None (the embedded server)."""
    return from_env(environ).get("dsn")


def inherited_environment() -> dict[str, str]:
    """A copy of this process's environment, for the worker processes a supervisor starts."""
    return dict(os.environ)


def embedded_dir_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """ANGELA_QUEUE_EMBEDDED_DIR: where the embedded server keeps its data, else None (the default)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_PREFIX + "EMBEDDED_DIR") or None
