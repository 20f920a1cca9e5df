"""Run the angela-queue benchmark suite.

    python -m benchmarks [--quick] [--dsn ADMIN_DSN] [--only drain,latency,...]

It creates a uniquely named database on the server of ADMIN_DSN (--dsn, else
ANGELA_QUEUE_BENCH_DSN, else postgresql://postgres@127.0.0.1:5432/postgres),
migrates it, runs the measurements, drops it, prints tables and writes the
figures to benchmarks/results/<time>-<mode>.json. It reports; it never asserts
a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import drain as drain_mod  # noqa: E402
from benchmarks import enqueue as enqueue_mod  # noqa: E402
from benchmarks import latency as latency_mod  # noqa: E402
from benchmarks import priority as priority_mod  # noqa: E402
from benchmarks import scale as scale_mod  # noqa: E402
from benchmarks import pyspy  # noqa: E402
from benchmarks.harness import (DEFAULT_ADMIN_DSN, RESULTS_DIR, BenchDB, machine_info, median,  # noqa: E402
                                spread_pct, wait_for_quiet)

SECTIONS = ("drain", "latency", "enqueue", "priority", "scale", "reference")

# (quick, full) sizes.
SIZES = {
    # Queued backlogs the claim is timed against, and a finished history.
    "scale_queued": ((1_000, 10_000), (1_000, 100_000, 1_000_000)),
    "scale_finished": (20_000, 1_000_000),
    "drain_n": (2_000, 20_000),
    "repeat": (1, 3),
    "latency_n": (100, 300),
    "enqueue_single_n": (500, 5_000),
    "enqueue_bulk_n": (2_000, 20_000),
    "priority_n": (300, 2_000),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_BENCH_DSN", DEFAULT_ADMIN_DSN),
                   help="admin DSN of the server to benchmark on (env ANGELA_QUEUE_BENCH_DSN)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run, from {','.join(SECTIONS)}")
    p.add_argument("-n", "--tasks", type=int, help="tasks per drain (default 20,000; quick 2,000)")
    p.add_argument("--repeat", type=int, help="runs of each drain configuration (default 3; quick 1)")
    p.add_argument("--latency-tasks", type=int, help="tasks in the idle-latency run (default 300)")
    p.add_argument("--latency-rate", type=float, default=50.0, help="enqueues per second (default 50)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement, wait up to SECONDS for the machine to be less than "
                        "--quiet-below %% busy (for shared machines; default 0: don't wait)")
    p.add_argument("--quiet-below", type=float, default=20.0, metavar="PCT",
                   help="the busy level --quiet-wait waits for (default 20%%)")
    p.add_argument("--py-spy", action="store_true",
                   help="profile every angela-queue worker of the drains with py-spy (perturbs the figures)")
    p.add_argument("--out", type=Path, help="JSON results path (default benchmarks/results/<time>-<mode>.json)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the benchmark database")
    p.add_argument("--peers", action="store_true",
                   help="run the side-by-side comparison with pgqueuer, procrastinate and chancy instead "
                        "(pip install -e '.[bench]'); its options: python -m benchmarks --peers --help")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def size(args: argparse.Namespace, name: str) -> int:
    return SIZES[name][0 if args.quick else 1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- sections -----------------------------------------------------------------

def quiet(args: argparse.Namespace) -> dict[str, float]:
    """Wait for a quiet machine if asked; always note how busy it was."""
    busy, waited = wait_for_quiet(args.quiet_wait, args.quiet_below)
    return {"busy_before_pct": busy, "waited_for_quiet_s": waited}


def run_drains(db: BenchDB, configs: list[drain_mod.DrainConfig], n: int, repeat: int,
               stamp: str, args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    py_spy = args.py_spy
    runs: list[dict] = []
    profiles: list[dict] = []
    for r in range(repeat):  # round-robin, so slow spells of a busy machine hit every config
        for cfg in configs:
            out = None
            if py_spy and cfg.impl == "angela-queue":
                out = RESULTS_DIR / f"pyspy-{stamp}-{slug(cfg.label)}-r{r + 1}"
            before = quiet(args)
            res = drain_mod.run_drain(db, cfg, n, pyspy_out=out)
            res["run"] = r + 1
            res.update(before)
            runs.append(res)
            log(f"  {cfg.label:<28} run {r + 1}/{repeat}: {fmt(res.get('tps'))} tasks/s "
                f"({fmt(res.get('tps_incl_startup'))} incl. startup {fmt(res.get('startup_s'), 2)}s)"
                f"; others used {fmt(res.get('cpu', {}).get('other_cores'), 2)} cores"
                f"{'' if res['verified'] else '  NOT VERIFIED: ' + str(res.get('error'))}")
            if not res["verified"] and res.get("output_tail"):
                log(res["output_tail"])
            if out is not None:
                for f in sorted(out.parent.glob(out.name + "-proc*.txt")):
                    profiles.append(pyspy.summarize(f))
    return runs, profiles


def aggregate_drains(runs: list[dict]) -> list[dict]:
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in by_label.items():
        tps = [r["tps"] for r in rs if r.get("tps")]
        incl = [r["tps_incl_startup"] for r in rs if r.get("tps_incl_startup")]
        cpu = [r["cpu"] for r in rs if r.get("cpu")]
        out.append({
            "label": label, "impl": rs[0]["impl"], "processes": rs[0]["processes"],
            "concurrency": rs[0]["concurrency"], "runs": len(rs),
            "verified": all(r["verified"] for r in rs),
            "tps_median": median(tps) if tps else None, "tps_min": min(tps) if tps else None,
            "tps_max": max(tps) if tps else None, "tps_spread_pct": spread_pct(tps) if tps else None,
            "tps_incl_startup_median": median(incl) if incl else None,
            "startup_s_median": median([r["startup_s"] for r in rs if r.get("startup_s") is not None] or [0.0]),
            "python_us_per_task": median([c["python_us_per_task"] for c in cpu]) if cpu else None,
            "postgres_us_per_task": median([c["postgres_backends_us_per_task"] for c in cpu]) if cpu else None,
            "aux_kernel_us_per_task": median([c["pg_aux_us_per_task"] + c["kernel_us_per_task"] for c in cpu])
            if cpu else None,
            "tasks_per_claim": median([r["tasks_per_claim"] for r in rs if r.get("tasks_per_claim")] or [0.0]),
            "machine_busy_pct": median([c["machine_busy_pct"] for c in cpu]) if cpu else None,
            "other_cores": median([c["other_cores"] for c in cpu]) if cpu else None,
        })
    return out


def drain_table(rows: list[dict]) -> str:
    return table(
        ["config", "runs", "tasks/s (median)", "min..max", "spread", "incl. startup", "startup s",
         "tasks/claim", "py µs/task", "pg µs/task", "aux+kernel µs/task", "machine busy", "others' cores",
         "verified"],
        [[r["label"], r["runs"], fmt(r["tps_median"]), f"{fmt(r['tps_min'])}..{fmt(r['tps_max'])}",
          f"{fmt(r['tps_spread_pct'])}%", fmt(r["tps_incl_startup_median"]), fmt(r["startup_s_median"], 2),
          fmt(r["tasks_per_claim"], 1), fmt(r["python_us_per_task"]), fmt(r["postgres_us_per_task"]), fmt(r["aux_kernel_us_per_task"]),
          f"{fmt(r['machine_busy_pct'])}%",
          fmt(r["other_cores"], 2), "yes" if r["verified"] else "NO"] for r in rows])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--peers" in argv:  # its own options: benchmarks/peers/run.py
        from benchmarks.peers import run as peers_run
        return peers_run.main([a for a in argv if a != "--peers"])
    args = parse_args(argv)
    sections = [s for s in SECTIONS if s in args.only.split(",")]
    mode = "quick" if args.quick else "full"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = args.tasks or size(args, "drain_n")
    repeat = args.repeat or size(args, "repeat")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = args.out or RESULTS_DIR / f"{stamp}-{mode}.json"

    results: dict[str, Any] = {"mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "command": "python -m benchmarks " + " ".join(argv),
                               "sizes": {"drain_n": n, "repeat": repeat}}
    db = BenchDB(args.dsn, keep=args.keep_db)
    log(f"creating database {db.name} ...")
    db.create()
    began = time.monotonic()
    try:
        results["machine"] = machine_info(db)
        m = results["machine"]
        log(f"machine: {m['cpu_logical']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
            f"PostgreSQL {m['postgres']}, Python {m['python']}, load {m['loadavg_at_start']}")
        if "drain" in sections:
            log(f"drain: {n:,} no-op tasks, {repeat} run(s) per config")
            runs, profiles = run_drains(db, drain_mod.worker_configs(not args.quick), n, repeat, stamp, args)
            results["drain"] = {"runs": runs, "summary": aggregate_drains(runs)}
            if profiles:
                results["drain"]["profiles"] = profiles
        if "reference" in sections:
            log(f"reference loops: {n:,} no-op tasks, {repeat} run(s) per config")
            runs, _ = run_drains(db, drain_mod.reference_configs(), n, repeat, stamp,
                                 argparse.Namespace(**{**vars(args), "py_spy": False}))
            results["reference"] = {"runs": runs, "summary": aggregate_drains(runs)}
        if "latency" in sections:
            count = args.latency_tasks or size(args, "latency_n")
            log(f"idle latency: {count} tasks at {args.latency_rate:g}/s ...")
            before = quiet(args)
            results["latency"] = latency_mod.run_latency(db, count, args.latency_rate)
            results["latency"].update(before)
        if "enqueue" in sections:
            log("enqueue rate ...")
            before = quiet(args)
            results["enqueue"] = enqueue_mod.run_enqueue(db, size(args, "enqueue_single_n"),
                                                         size(args, "enqueue_bulk_n"))
            results["enqueue_conditions"] = before
        if "priority" in sections:
            pn = size(args, "priority_n")
            log(f"priority order: backlog of {pn:,}, 1 worker x concurrency 1 ...")
            results["priority"] = []
            for batch_size in (None, 1):
                before = quiet(args)
                results["priority"].append(priority_mod.run_priority(db, pn, batch_size=batch_size))
                results["priority"][-1].update(before)
        if "scale" in sections:
            sizes = size(args, "scale_queued")
            log(f"claim cost at {', '.join(f'{n:,}' for n in sizes)} queued, and behind "
                f"{size(args, 'scale_finished'):,} finished ...")
            results["scale"] = scale_mod.run_scale(db, sizes, size(args, "scale_finished"))
    finally:
        results["seconds"] = round(time.monotonic() - began, 1)
        results.setdefault("machine", {})["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        db.drop()
        out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print(report(results))
    print(f"\nresults: {out_path}")
    return 0 if all_verified(results) else 1


def all_verified(results: dict[str, Any]) -> bool:
    ok = True
    for key in ("drain", "reference"):
        if key in results:
            ok &= all(r["verified"] for r in results[key]["runs"])
    if "latency" in results:
        ok &= results["latency"]["error"] is None
    if "priority" in results:
        ok &= all(p["error"] is None and p["succeeded_once"] == p["n"] for p in results["priority"])
    return ok


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        f"angela-queue benchmarks ({results['mode']}): {results['command']}",
        f"machine: {m.get('cpu_logical')} logical cores ({m.get('cpu_model')}), {m.get('ram_gib')} GiB RAM, "
        f"{m.get('os')}",
        f"PostgreSQL {m.get('postgres')} at {m.get('postgres_host')} "
        f"({', '.join(f'{k}={v}' for k, v in sorted(m.get('postgres_settings', {}).items()))})",
        f"Python {m.get('python')}, psycopg {m.get('psycopg')}, angela-queue {m.get('angela_queue')} "
        f"@ {m.get('git_commit')}"
        f"{' + uncommitted changes ' + m['git_diff_sha1'] if m.get('git_diff_sha1') else ''}",
        f"load average {m.get('loadavg_at_start')} at start, {m.get('loadavg_at_end')} at end; "
        f"{results['seconds']} s",
    ]
    if "drain" in results:
        parts += ["", f"1. Drain throughput ({results['sizes']['drain_n']:,} pre-inserted no-op tasks; "
                      "tasks/s from the first started_at to the last finished_at)",
                  drain_table(results["drain"]["summary"])]
        parts += _capped_ratio(results["drain"]["summary"])
        for prof in results["drain"].get("profiles", [])[:2]:
            parts += ["", pyspy.format_summary(prof)]
    if "latency" in results:
        lat = results["latency"]
        parts += ["", f"2. Idle latency, enqueue -> start ({lat['measured']} tasks enqueued one per "
                      f"transaction at {fmt(lat['achieved_rate_per_s'], 1)}/s; 1 idle worker, "
                      f"concurrency {lat['worker_concurrency']}; machine {fmt(lat.get('busy_before_pct'))}% "
                      "busy just before)"]
        if lat.get("error"):
            parts.append(f"ERROR: {lat['error']}")
        parts.append(table(["ms", "min", "p50", "p90", "p99", "max", "mean"],
                           [[name, *(fmt(lat[key].get(k), 2) for k in ("min", "p50", "p90", "p99", "max", "mean"))]
                            for name, key in (("started_at - created_at", "start_ms"),
                                              ("started_at - enqueue returned", "start_after_return_ms"),
                                              ("finished_at - created_at", "finish_ms"),
                                              ("client enqueue round trip", "enqueue_round_trip_ms"))
                            if lat.get(key)]))
    if "enqueue" in results:
        cond = results.get("enqueue_conditions", {})
        parts += ["", f"3. Enqueue rate (no workers running; machine {fmt(cond.get('busy_before_pct'))}% busy "
                      "just before)",
                  table(["API", "how", "tasks", "tasks/s", "call p50 ms", "call p99 ms"],
                        [[r["label"], r["method"], fmt(r["n"]), fmt(r["tps"]), fmt(r.get("call_ms_p50"), 2),
                          fmt(r.get("call_ms_p99"), 2)] for r in results["enqueue"]])]
    if "priority" in results:
        parts += ["", "4. Priority order under a backlog (1 worker x concurrency 1; start order vs "
                      "effective-priority order)",
                  table(["variant", "tasks", "adjacent in order", "inversions", "inverted pairs",
                         "kendall tau", "max displ.", "top-10% overlap", "backdated low before fresh crit."],
                        [[p["label"], fmt(p["n"]), f"{100 * p['adjacent_in_order']:.1f}%", fmt(p["inversions"]),
                          f"{100 * p['inversion_fraction']:.2f}%", f"{p['kendall_tau']:.3f}",
                          fmt(p["max_displacement"]), f"{100 * p['first_decile_overlap']:.1f}%",
                          _beats(p)] for p in results["priority"]])]
        for p in results["priority"]:
            if p["inversions_by_tier_of_early_task"]:
                parts.append(f"  {p['label']}: inversions by tier of the task that started too early: "
                             f"{p['inversions_by_tier_of_early_task']}")
    if "scale" in results:
        sc = results["scale"]
        parts += ["", f"6. Claim cost against the queue's size (tasks_claim of {sc['claim_limit']} then its completion, "
                      f"{sc['rounds']} rounds on one connection; median claim round trip)",
                  table(["tasks queued", "finished rows", "claim p50 ms", "max ms", "ratio"],
                        [[fmt(r["queued"]), "0", fmt(r["claim_ms_p50"], 3), fmt(r["claim_ms_max"], 2),
                          f"{r['ratio_to_smallest']:.2f}x"] for r in sc["queued"]]
                        + ([[fmt(sc["finished"]["queued"]), fmt(sc["finished"]["finished"]),
                             fmt(sc["finished"]["claim_ms_p50"], 3), "", f"{sc['finished']['ratio_to_none_finished']:.2f}x"]]
                           if sc.get("finished") else [])
                        + ([[f"{fmt(sc['capped']['queued'])} + {fmt(sc['capped']['capped_queued'])} capped", "0",
                             fmt(sc["capped"]["claim_ms_p50"], 3), "", f"{sc['capped']['ratio_to_none_capped']:.2f}x"]]
                           if sc.get("capped") else []))]
    if "reference" in results:
        parts += ["", "5. Reference: lean hand-written psycopg loop on the same table (same claim CTE)",
                  drain_table(results["reference"]["summary"])]
    return "\n".join(parts)


def _capped_ratio(summary: list[dict[str, Any]]) -> list[str]:
    """The claim of unlimited kinds must not slow down behind a capped kind's backlog."""
    by_label = {r["label"]: r for r in summary}
    plain, capped = by_label.get("aq async 2x10"), by_label.get("aq async 2x10 + capped backlog")
    if not plain or not capped or not plain.get("tps_median") or not capped.get("tps_median"):
        return []
    lines = [f"   behind 10,000 tasks of a kind capped at 1 at once: {fmt(capped['tps_median'])} tasks/s, "
             f"{capped['tps_median'] / plain['tps_median']:.2f}x the same drain without them"]
    fast = by_label.get("aq async 2x10, fast queue")
    if fast and fast.get("tps_median"):
        lines.append(f"   on a 'fast' queue (synchronous_commit off): {fmt(fast['tps_median'])} tasks/s, "
                     f"{fast['tps_median'] / plain['tps_median']:.2f}x the durable drain")
    one, two = by_label.get("aq run: 1 supervisor x 2 workers x 10"), by_label.get("aq run: 2 supervisors x 1 worker x 10")
    if one and two and one.get("tps_median") and two.get("tps_median"):
        lines.append(f"   two supervisors on one database: {fmt(two['tps_median'])} tasks/s, "
                     f"{two['tps_median'] / one['tps_median']:.2f}x one supervisor with the same 2 workers "
                     f"(exactly once: {'yes' if one['verified'] and two['verified'] else 'NO'})")
    return lines


def _beats(p: dict[str, Any]) -> str:
    b = p["backdated_low_over_fresh_critical"]
    return f"{b['started_first']}/{b['pairs']}" if b["pairs"] else "-"


if __name__ == "__main__":
    sys.exit(main())
