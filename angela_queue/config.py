"""Settings: one frozen object that flows from flags to the environment to
defaults, then into constructors. Nothing else in the package reads
``os.environ``.

Precedence, highest first: explicit flag > ``ANGELA_QUEUE_*`` environment >
profile > default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

from .errors import ConfigError

ENV_PREFIX = "ANGELA_QUEUE_"

# Task defaults (the SQL column defaults agree with these).
DEFAULT_PRIORITY = 5
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_QUEUE = "default"

# Overflow: how long a priority >= 5 enqueue waits for space in a full queue.
ENQUEUE_FULL_WAIT_S = 5.0

# NOTIFY channels (payload: the queue name).
CHANNEL_INSERT = "angela_queue_insert"
CHANNEL_SPACE = "angela_queue_space"


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


@dataclass(frozen=True)
class Settings:
    dsn: str | None = None
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)

    # Worker
    concurrency: int = 1
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

    # Supervisor
    profile: str | None = None
    min_workers: int = 2
    base_workers: int = 4
    max_workers: int = field(default_factory=default_max_workers)
    scale_up_depth: int = 10
    scale_down_depth: int = 2
    scale_interval_s: float = 30.0
    max_queue_size: int | None = None
    retention_s: float = 7 * 24 * 3600.0
    # Seconds a maintenance leader's lease lasts unless renewed (it renews every heartbeat).
    leader_lease_s: float = 15.0
    # Room check before adding a worker: below this much available memory, or
    # with the CPU this busy over the last scale interval, no worker is added.
    room_min_free_memory_mb: float = 256.0
    room_max_cpu_percent: float = 95.0

    def __post_init__(self) -> None:
        problems = []
        if self.concurrency < 1:
            problems.append(f"concurrency must be at least 1 (got {self.concurrency})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size})")
        if not self.queues or any(not q for q in self.queues):
            problems.append(f"queues must be non-empty names (got {list(self.queues)})")
        if self.min_workers < 0:
            problems.append(f"min_workers must be >= 0 (got {self.min_workers})")
        if self.max_workers < 1:
            problems.append(f"max_workers must be >= 1 (got {self.max_workers})")
        if self.min_workers > self.max_workers:
            problems.append(f"min_workers ({self.min_workers}) exceeds max_workers ({self.max_workers})")
        for name in ("batch_wait_s", "heartbeat_interval_s", "stuck_after_s", "dead_after_s",
                     "shutdown_grace_s", "scale_interval_s", "retention_s", "leader_lease_s"):
            if getattr(self, name) <= 0 and name not in ("batch_wait_s", "shutdown_grace_s"):
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative (got {getattr(self, name)})")
        if self.default_timeout_s is not None and self.default_timeout_s <= 0:
            problems.append(f"default_timeout_s must be positive (got {self.default_timeout_s})")
        if self.profile is not None and self.profile not in PROFILES:
            problems.append(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if problems:
            raise ConfigError("; ".join(problems))

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Settings)}


def _parse(name: str, raw: str):
    kind = _FIELD_TYPES[name]
    try:
        if name == "queues":
            return tuple(q.strip() for q in raw.split(",") if q.strip())
        if kind in ("int", "int | None"):
            return None if raw.strip().lower() in ("", "none") and "None" in kind else int(raw)
        if kind in ("float", "float | None"):
            return None if raw.strip().lower() in ("", "none") and "None" in kind else float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None


def from_env(environ: Mapping[str, str] | None = None) -> dict:
    """Settings fields given by ANGELA_QUEUE_* variables (DSN also from DATABASE_URL)."""
    environ = os.environ if environ is None else environ
    found: dict = {}
    for name in _FIELD_TYPES:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            found[name] = _parse(name, raw)
    if "dsn" not in found and environ.get("DATABASE_URL"):
        found["dsn"] = environ["DATABASE_URL"]
    return found


def load_settings(flags: Mapping | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings: flags (None = not given) > environment > profile > defaults."""
    values: dict = {}
    env = from_env(environ)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    profile_name = given.get("profile", env.get("profile"))
    if profile_name is not None:
        if profile_name not in PROFILES:
            raise ConfigError(f"unknown profile {profile_name!r}; choose one of {', '.join(PROFILES)}")
        p = PROFILES[profile_name]
        values.update(base_workers=p.base_workers, min_workers=p.min_workers, max_workers=p.max_workers,
                      max_queue_size=p.max_queue_size, scale_interval_s=p.scale_interval_s)
    values.update(env)
    values.update(given)
    unknown = set(values) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**values)


def dsn_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """ANGELA_QUEUE_DSN, then DATABASE_URL, else None (the embedded server)."""
    return from_env(environ).get("dsn")


def embedded_dir_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """ANGELA_QUEUE_EMBEDDED_DIR: where the embedded server keeps its data, else None (the default)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_PREFIX + "EMBEDDED_DIR") or None
