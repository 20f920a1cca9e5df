"""The dashboard in headless Chromium (Debian's chromium and chromium-driver,
through selenium), on a real database with a real worker: the numbers on the
page are the database's, and Retry on a failed task makes it succeed.

The handler of kind "charge" fails the first time it sees an order (a flag
table records the order) and succeeds on retry. Screenshots of the overview
and of the task page are saved in the test's directory, and to docs/ (the
README shows them) when ANGELA_QUEUE_SAVE_SCREENSHOTS=1, so an ordinary run
leaves the checkout clean.

The charts read the per-minute history; a test cannot wait an hour for one,
so the hour before this minute is written into stats_minute and depth_minute
as the leader would have (a daily-looking load), and this minute is rolled
up from the real tasks by the real rollup statement.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from angela_queue import db
from fix_dashboard import start_dashboard  # noqa: F401 - a fixture
from fix_procs import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def shots_dir(tmp_path: Path) -> Path:
    """docs/ when asked to refresh the README's screenshots, else the test's own directory."""
    if os.environ.get("ANGELA_QUEUE_SAVE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path
FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.2", "--concurrency", "4"]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Debian's chromium and chromium-driver are not installed")

APP = """
import os, psycopg
from angela_queue import task

DSN = os.environ["AQ_TEST_DSN"]

@task("mail")
def mail(to, text=""):
    return {"sent_to": to}

@task("charge")
def charge(order, amount_eur):
    # Fails the first time it sees an order, succeeds on the retry.
    with psycopg.connect(DSN, autocommit=True) as conn:
        first = conn.execute("INSERT INTO public.charge_seen (order_id) VALUES (%s) "
                             "ON CONFLICT DO NOTHING RETURNING 1", (order,)).fetchone()
    if first:
        raise TimeoutError("payment gateway did not answer within 5 s")
    return {"order": order, "charged_eur": amount_eur}
"""


def seed_history(conn) -> None:
    """The hour before the last minute, as the leader's rollup would have written it."""
    conn.execute("""
        INSERT INTO angela_queue.stats_minute (minute, queue, tier, kind, enqueued, started, on_time, succeeded,
                                               failed, wait_p50_ms, wait_p95_ms, wait_p99_ms)
        SELECT date_trunc('minute', now()) - make_interval(mins => m), 'default', tier, 'mail',
               n, n, n - late, n - f, f, w * 0.4, w, w * 1.3
        FROM generate_series(2, 60) AS m,
             LATERAL (VALUES ('critical', 0.1), ('high', 0.2), ('medium', 0.45), ('low', 0.25)) AS t(tier, share),
             LATERAL (SELECT greatest(1, round(share * (40 + 25 * sin(m / 9.0) + (m % 7))))::bigint AS n,
                             (m % 13 = 0)::int AS f,
                             CASE tier WHEN 'critical' THEN 300 + 500 * (m % 5 = 0)::int
                                       WHEN 'high' THEN 8000 + 40 * m WHEN 'medium' THEN 40000 + 3000 * sin(m / 5.0)
                                       ELSE 200000 + 6000 * m END AS w) AS x,
             LATERAL (SELECT (tier = 'critical' AND m % 17 = 0)::int
                             + (tier = 'high' AND m BETWEEN 20 AND 24)::int * 2 AS late) AS y""")
    conn.execute("""
        INSERT INTO angela_queue.depth_minute (minute, queue, tier, queued, scheduled, running, overdue)
        SELECT date_trunc('minute', now()) - make_interval(mins => m), 'default', tier,
               greatest(0, round(base * (1 + sin(m / 8.0))))::bigint, 0, 1, 0
        FROM generate_series(2, 60) AS m,
             LATERAL (VALUES ('critical', 1), ('high', 4), ('medium', 9), ('low', 16)) AS t(tier, base)""")
    # Rolled up to the minute before this one: the leader (our worker) goes
    # on from there, and leaves the hour before alone.
    db.fetch_all(conn, "stats_progress_write",
                 {"rolled_until": conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]})


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1440,1900", "--force-device-scale-factor=1", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--force-prefers-reduced-motion"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_the_page_shows_the_database_and_retry_makes_a_failed_task_succeed(
        dsn, conn, client, write_app, start_worker, start_dashboard, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    conn.execute("CREATE TABLE public.charge_seen (order_id integer PRIMARY KEY)")
    # What the Schedule panels show: a nightly periodic task and a capped kind.
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, cron, timezone) "
                 "VALUES ('nightly-digest', 'digest', '30 2 * * *', 'Europe/Paris')")
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency, rate_limit, rate_period_s) "
                 "VALUES ('call_api', 4, 100, 60)")
    seed_history(conn)
    worker = start_worker(write_app(APP), *FAST)
    wait_until(lambda: conn.execute("SELECT count(*) AS n FROM angela_queue.worker_health "
                                    "WHERE status IN ('active', 'idle')").fetchone()["n"] == 1,
               timeout=20, interval=0.05, message="the worker to register", details=worker.log)
    client.enqueue_many([{"kind": "mail", "payload": {"to": f"user{i}@example.com", "text": "hello?"},
                          "priority": 1 + i % 10} for i in range(40)])
    charges = [client.enqueue("charge", {"order": 1000 + i, "amount_eur": 20 + i}, priority=7,
                              max_attempts=1).id for i in range(3)]
    # A queue nobody serves, and a paused one: both warned about.
    client.enqueue("export", {"month": "2025-01"}, queue="reports")
    client.enqueue_many([{"kind": "mail", "payload": {"to": "bulk@example.com"}, "queue": "bulk"}] * 4)
    conn.execute("SELECT angela_queue.pause_queue('bulk')")
    wait_until(lambda: conn.execute("SELECT count(*) AS n FROM angela_queue.tasks WHERE queue = 'default' "
                                    "AND status IN ('succeeded', 'failed')").fetchone()["n"] == 43,
               timeout=30, interval=0.1, message="the worker to finish the tasks", details=worker.log)
    minute = conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]
    db.fetch_all(conn, "stats_rollup", {"since": minute, "until": minute + dt.timedelta(minutes=1)})
    db.fetch_all(conn, "stats_progress_write", {"rolled_until": minute + dt.timedelta(minutes=1)})
    db.fetch_all(conn, "stats_depth_snapshot")

    board = start_dashboard(dsn)
    browser.get(board.printed_url)                                 # ...#token=...: the actions are enabled
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda d: "live" in text_of(d, "pill") and "actions enabled" in text_of(d, "actions-state"))
    assert "#token=" not in browser.current_url                    # taken out of the address bar at once

    def scalar(sql: str, params=None) -> int:
        return conn.execute(sql, params).fetchone()["n"]

    def charted_total(driver) -> int:
        """Tasks succeeded in the database over the window the chart draws."""
        chart = driver.find_element(By.ID, "c-throughput")
        return scalar("SELECT coalesce(sum(succeeded), 0) AS n FROM angela_queue.stats_minute "
                      "WHERE minute >= to_timestamp(%s) AND minute < to_timestamp(%s)",
                      (float(chart.get_attribute("data-since")), float(chart.get_attribute("data-until"))))

    failed = scalar("SELECT count(*) AS n FROM angela_queue.tasks WHERE status = 'failed'")
    assert failed == 3
    queued = scalar("SELECT count(*) AS n FROM angela_queue.tasks WHERE status = 'queued'")
    wait.until(lambda d: text_of(d, "k-failed") == str(failed) and text_of(d, "k-queued") == str(queued)
               and text_of(d, "k-rate") != "–")
    row = browser.find_element(By.CSS_SELECTOR, '#failures tr[data-kind="charge"]')
    assert row.find_element(By.CLASS_NAME, "f-count").text == "3"
    assert "payment gateway did not answer" in row.text
    warnings = text_of(browser, "warnings")
    assert "Queue “bulk” is paused" in warnings and "kind “export” wait in queue “reports”" in warnings
    # The charts drew the history: a line per tier, and the window of each.
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#c-depth path")) == 4)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#c-wait line[stroke-dasharray]")) == 4
    assert "tasks / min" in browser.find_element(By.ID, "c-throughput").text
    assert f"succeeded ({charted_total(browser):,})" in browser.find_element(By.ID, "l-throughput").text
    browser.save_screenshot(str(shots_dir(tmp_path) / "dashboard-overview.png"))
    # The range picker: the same history in 15-minute points over 24 h.
    browser.find_element(By.CSS_SELECTOR, '#range button[data-range="24h"]').click()
    wait.until(lambda d: "15 min per point" in d.find_element(By.ID, "c-throughput").text)
    assert f"succeeded ({charted_total(browser):,})" in browser.find_element(By.ID, "l-throughput").text

    # The failures panel links to the task list filtered to the group, then to a task.
    # Found again, and again if a refresh redraws the panel's rows between
    # finding and clicking (the range change just asked for one).
    def click_count(d) -> bool:
        d.find_element(By.CSS_SELECTOR, '#failures tr[data-kind="charge"] .f-count').click()
        return True
    WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
        click_count)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#tasks tr[data-status="failed"]')) == 3)
    assert browser.find_element(By.ID, "f-status").get_attribute("value") == "failed"
    assert browser.find_element(By.ID, "f-kind").get_attribute("value") == "charge"
    listed = [int(r.get_attribute("data-id")) for r in browser.find_elements(By.CSS_SELECTOR, "#tasks tr[data-id]")]
    assert listed == sorted(charges, reverse=True)
    target = charges[0]
    browser.find_element(By.CSS_SELECTOR, f'#tasks tr[data-id="{target}"] a').click()
    wait.until(lambda d: text_of(d, "t-title").startswith(f"Task #{target}") and text_of(d, "t-status") == "failed")
    assert "payment gateway did not answer" in text_of(browser, "t-error")
    assert '"order": 1000' in text_of(browser, "t-payload")

    browser.find_element(By.ID, "t-retry").click()
    wait.until(lambda d: text_of(d, "t-status") == "succeeded")
    row = conn.execute("SELECT status, result, errors FROM angela_queue.tasks WHERE id = %s", (target,)).fetchone()
    assert row["status"] == "succeeded" and row["result"] == {"order": 1000, "charged_eur": 20}
    wait.until(lambda d: '"charged_eur": 20' in text_of(d, "t-result"))
    browser.set_window_size(1440, 1150)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#t-errors tr")) == len(row["errors"]) == 1
    browser.save_screenshot(str(shots_dir(tmp_path) / "dashboard-task.png"))
    assert board.stop() == 0
    assert worker.stop() == 0
