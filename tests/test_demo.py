"""`angela-queue demo`: real processes on a real database, and the workload's mix.

The demo is run as users run it (`python -m angela_queue demo`), on this
test's database, with `--port 0`. Its process tree is sampled while it runs
(the supervisor's workers come and go as it scales), so "nothing left
behind" is checked against every process it ever had.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from angela_queue.cli import main
from angela_queue.demo import Workload
from angela_queue.demo import workload as mix
from fix_procs import alive, query, scalar, wait_until

URL_RE = re.compile(r"^angela-queue demo: open (http://127\.0\.0\.1:(\d+)/#token=([A-Za-z0-9_-]+))$")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DemoProcess:
    """One `angela-queue demo` child: stdout collected line by line, stderr in a file."""

    def __init__(self, dsn: str, tmp_path: Path, *args: str, new_session: bool = False):
        self.err_path = tmp_path / f"demo-{time.monotonic_ns()}.err"
        self._err = open(self.err_path, "wb")
        env = {**os.environ}
        for name in ("ANGELA_QUEUE_DSN", "DATABASE_URL", "ANGELA_QUEUE_DASHBOARD_TOKEN"):
            env.pop(name, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "angela_queue", "demo", "--dsn", dsn, *args],
                                     stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
                                     text=True, env=env, start_new_session=new_session)
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text(errors="replace")

    def details(self) -> str:
        return "stdout:\n" + "\n".join(self.lines) + "\nstderr:\n" + self.stderr()

    def descendants(self) -> list[psutil.Process]:
        """Its live descendants now (and remember each one, for the final check)."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return [p for p in procs if alive(p.pid)]

    def url(self) -> re.Match:
        def found():
            self.descendants()
            return next((m for m in map(URL_RE.match, self.lines) if m), None)
        return wait_until(found, timeout=60, message="the demo's URL", details=self.details)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.descendants()
            time.sleep(0.05)
        if self.proc.poll() is None:
            raise AssertionError(f"the demo did not exit within {timeout}s\n{self.details()}")
        self._reader.join(10)
        return self.proc.returncode

    def left_behind(self) -> list[int]:
        """Processes it ever had that still live (same pid *and* start time: not a reused pid)."""
        still = []
        for pid, proc in self.seen.items():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        return still

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for proc in self.seen.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self._err.close()


@pytest.fixture
def run_demo(dsn, tmp_path):
    started: list[DemoProcess] = []

    def start(*args: str, new_session: bool = False) -> DemoProcess:
        demo = DemoProcess(dsn, tmp_path, *args, new_session=new_session)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.cleanup()


def succeeded_tiers(dsn: str) -> set[str]:
    return {r["tier"] for r in query(dsn, "SELECT DISTINCT tier FROM angela_queue.tasks WHERE status = 'succeeded'")}


def get(url: str) -> tuple[int, str]:
    with NO_PROXY.open(url, timeout=10) as response:
        return response.status, response.read().decode("utf-8", "replace")


def assert_clean_exit(demo: DemoProcess, dsn: str, rc: int) -> None:
    assert rc == 0, demo.details()
    assert demo.seen, "the demo never had child processes"
    assert demo.left_behind() == [], f"left behind: {demo.left_behind()}\n{demo.details()}"
    assert "Traceback" not in demo.stderr(), demo.details()
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'running'") == 0
    # Stopped in order, not killed: the supervisor and every worker recorded their own stop.
    assert {r["status"] for r in query(dsn, "SELECT status FROM angela_queue.supervisors")} == {"stopped"}
    assert {r["status"] for r in query(dsn, "SELECT status FROM angela_queue.workers")} == {"stopped"}
    assert "did not stop" not in demo.stderr(), demo.details()
    assert any(line.startswith("angela-queue demo: stopped after") for line in demo.lines), demo.details()


@pytest.mark.slow
def test_demo_serves_the_dashboard_runs_every_tier_and_stops_by_itself(dsn, run_demo):
    demo = run_demo("--duration", "20", "--port", "0", "--seed", "1")
    match = demo.url()
    url, port, token = match.group(1), int(match.group(2)), match.group(3)
    assert len(token) >= 40

    status, _ = get(url.split("#", 1)[0])
    assert status == 200

    # The dashboard is our child on that port, and holds the token the URL carries.
    dashboards = [p for p in demo.descendants() if "dashboard" in p.cmdline()]
    assert len(dashboards) == 1, demo.details()
    assert dashboards[0].environ().get("ANGELA_QUEUE_DASHBOARD_TOKEN") == token
    assert ["--port", str(port)] == dashboards[0].cmdline()[-2:]
    # ... and the supervisor does not.
    [supervisor] = [p for p in demo.descendants() if "run" in p.cmdline() and "--app" in p.cmdline()]
    assert "ANGELA_QUEUE_DASHBOARD_TOKEN" not in supervisor.environ()

    wait_until(lambda: demo.descendants() and succeeded_tiers(dsn) == {"critical", "high", "medium", "low"},
               timeout=40, message="a task of every tier to succeed", details=demo.details)
    rows = query(dsn, "SELECT kind, queue, boost_rules FROM angela_queue.tasks")
    assert {r["queue"] for r in rows} == {"demo"}
    assert {"chat_reply", "learning_analysis"} <= {r["kind"] for r in rows}
    fired = {rule for r in rows for rule in (r["boost_rules"] or [])}
    assert {"emotional", "question"} <= fired, fired

    assert_clean_exit(demo, dsn, demo.wait(60))
    assert any(line.startswith("  supervisor  angela-queue run --app angela_queue.demo.handlers")
               for line in demo.lines), demo.details()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_mid_run_stops_everything_cleanly(dsn, run_demo, how):
    # Ctrl-C in a terminal signals the whole foreground process group.
    demo = run_demo("--port", "0", "--seed", "2", "--rate", "10", new_session=how == "ctrl-c")
    demo.url()
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'") >= 5,
               timeout=30, message="some tasks to succeed", details=demo.details)
    wait_until(lambda: len(demo.descendants()) >= 3, message="the supervisor, a worker and the dashboard",
               details=demo.details)
    if how == "ctrl-c":
        os.killpg(demo.proc.pid, signal.SIGINT)
    else:
        demo.proc.send_signal(signal.SIGTERM)
    assert_clean_exit(demo, dsn, demo.wait(60))


@pytest.mark.slow
def test_a_killed_demo_takes_its_children_with_it(dsn, run_demo):
    demo = run_demo("--port", "0", "--seed", "3")
    demo.url()
    wait_until(lambda: len(demo.descendants()) >= 3, message="the supervisor, a worker and the dashboard",
               details=demo.details)
    demo.proc.kill()
    demo.proc.wait(10)
    wait_until(lambda: not demo.left_behind(), timeout=60, message="the children to exit after the demo died",
               details=lambda: "left: " + "; ".join(
                   f"{pid} {' '.join(demo.seen[pid].cmdline())[:200]}\n{_probe(pid)}" for pid in demo.left_behind()))


def _probe(pid: int) -> str:
    """What a process left behind is doing: its signal masks, and its threads' stacks if py-spy is here."""
    out = ""
    try:
        with open(f"/proc/{pid}/status") as status:
            out += "".join(line for line in status if line.startswith(("State", "PPid", "Sig", "Shd")))
    except OSError as exc:
        out += f"{exc}\n"
    if shutil.which("py-spy"):
        out += subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
    return out


@pytest.mark.parametrize("args, complaint", [
    (["--rate", "-1"], "--rate"),
    (["--rate", "0"], "--rate"),
    (["--rate", "lots"], "--rate"),
    (["--duration", "-5"], "--duration"),
    (["--duration", "0"], "--duration"),
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--seed", "x"], "--seed"),
])
def test_bad_arguments_are_refused_before_anything_starts(args, complaint):
    result = CliRunner().invoke(main, ["demo", "--dsn", "postgresql://nowhere.invalid/x", *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{complaint}'" in result.output
    assert "Traceback" not in result.output


def test_a_port_in_use_is_an_error_that_names_it(dsn, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")}
        result = subprocess.run([sys.executable, "-m", "angela_queue", "demo", "--dsn", dsn, "--port", str(port),
                                 "--duration", "5"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 0


# -- the workload --------------------------------------------------------------


def test_the_workload_has_the_plans_mix():
    tasks = Workload(rate=4, seed=7).sample(20_000)
    kinds = Counter(t["kind"] for t in tasks)
    share = {k: n / len(tasks) for k, n in kinds.items()}
    assert share["chat_reply"] == pytest.approx(mix.CHAT_SHARE, abs=0.03)
    assert share["learning_analysis"] == pytest.approx(mix.LEARNING_SHARE, abs=0.03)
    assert share["update_memory"] == pytest.approx(mix.MEMORY_SHARE, abs=0.02)
    assert share["daily_report"] == pytest.approx(mix.REPORT_SHARE, abs=0.01)

    chats = [t for t in tasks if t["kind"] == "chat_reply"]
    importance = [t["priority"] for t in chats]
    assert set(importance) == set(range(1, 11))
    assert statistics.mean(importance) == pytest.approx(8.6, abs=0.1)

    payloads = [t["payload"] for t in chats]
    emotional = sum(p["emotional"] for p in payloads) / len(chats)
    urgent = sum("urgent" in p["text"].lower() for p in payloads) / len(chats)
    questions = sum(p["text"].endswith("?") for p in payloads) / len(chats)
    assert emotional == pytest.approx(mix.EMOTIONAL_SHARE, abs=0.03)
    assert urgent == pytest.approx(mix.URGENT_SHARE, abs=0.02)
    assert questions == pytest.approx(mix.QUESTION_SHARE, abs=0.03)
    # The payload's flags say what its text says (the boost rules read the text).
    assert all(p["question"] == p["text"].endswith("?") for p in payloads)

    # Routine learning analysis is low priority (batched), and every tier shows up.
    assert {t["priority"] for t in tasks if t["kind"] == "learning_analysis"} <= {1, 2, 3, 4}
    tiers = Counter("critical" if t["priority"] >= 9 else "high" if t["priority"] >= 7
                    else "medium" if t["priority"] >= 5 else "low" for t in tasks)
    assert all(tiers[tier] > 0.02 * len(tasks) for tier in ("critical", "high", "medium", "low")), tiers


def test_the_workload_keeps_its_rate_and_its_seed():
    def first(seconds: float, seed: int) -> list:
        out = []
        for arrival in Workload(rate=5, seed=seed).arrivals():
            if arrival.at_s >= seconds:
                return out
            out.append(arrival)
        return out

    arrivals = first(600, seed=11)
    assert [a.at_s for a in arrivals] == sorted(a.at_s for a in arrivals)
    assert sum(len(a.tasks) for a in arrivals) / 600 == pytest.approx(5, rel=0.1)
    bursts = [a for a in arrivals if len(a.tasks) > 1]
    assert [a.at_s for a in bursts] == [mix.FIRST_BURST_S + i * mix.BURST_EVERY_S for i in range(len(bursts))]
    assert {t["kind"] for a in bursts for t in a.tasks} == {"learning_analysis"}
    assert first(60, seed=11) == first(60, seed=11)
    assert first(60, seed=11) != first(60, seed=12)


def test_bad_rates_are_refused_by_the_generator_too():
    for rate in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="rate must be positive"):
            Workload(rate)


@pytest.mark.slow
def test_with_no_dsn_the_demo_runs_on_a_database_of_its_own_on_the_embedded_server(tmp_path):
    import tempfile

    from angela_queue import embedded
    from angela_queue.embedded import EmbeddedServer
    # Under /tmp: as root the server runs as the service user, who cannot enter pytest's tmp_path.
    data_dir = Path(tempfile.mkdtemp(prefix="aq-test-demo-embedded-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL", "ANGELA_QUEUE_EMBEDDED_DIR", "PGPASSWORD")}
    env["ANGELA_QUEUE_EMBEDDED_DIR"] = str(data_dir)
    try:
        result = subprocess.run([sys.executable, "-m", "angela_queue", "demo", "--duration", "6", "--port", "0",
                                 "--seed", "4"], env=env, cwd=tempfile.gettempdir(), capture_output=True,
                                text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        assert any(URL_RE.match(line) for line in result.stdout.splitlines()), result.stdout
        assert "/angela_queue_demo (the embedded server" in result.stdout
        server = EmbeddedServer(data_dir)
        password = server.password_file.read_text().strip()
        assert password not in result.stdout + result.stderr
        assert scalar(server.dsn("angela_queue_demo"), "SELECT count(*) FROM angela_queue.tasks") > 0
        # The user's own database (the other commands' default) is left alone.
        assert scalar(server.dsn(embedded.DATABASE), "SELECT count(*) FROM angela_queue.tasks") == 0
    finally:
        EmbeddedServer(data_dir).delete()
