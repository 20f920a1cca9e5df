"""Run angela-queue and its peers side by side on the same workloads.

    python -m benchmarks --peers [--quick] [--systems aq,pgqueuer,procrastinate,chancy] [...]

Each system gets its own freshly created database on the server of --dsn
(unique name, dropped at the end, even after an error or Ctrl-C). The
workloads (benchmarks/peers/workloads.py) run against each system in turn,
and the drains take turns across repeats, so a slow spell on a shared machine
does not land on one system only. The reference loop (benchmarks/reference.py)
and plain INSERTs run in the same run, on angela-queue's table. It prints one
row per workload, one column per system, the best peer, the reference and
angela-queue's ratios to both, and writes every figure to
benchmarks/results/<time>-peers-<quick|full>.json. It reports; it never
asserts a timing. The exit status is 1 if any exactly-once check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import drain as drain_mod
from ..harness import DEFAULT_ADMIN_DSN, RESULTS_DIR, machine_info, median, spread_pct, wait_for_quiet
from ..run import table
from . import systems as systems_mod
from . import workloads

SECTIONS = ("drain", "reference", "enqueue", "latency", "overload")
DRAIN_CONFIGS = ((1, 10), (2, 10))

# (quick, full)
SIZES = {
    "drain_n": (2_000, 10_000),
    "repeat": (1, 2),
    "enqueue_single_n": (500, 3_000),
    "enqueue_bulk_calls": (1, 4),
    "latency_n": (100, 300),
    "overload_s": (8.0, 30.0),
}

# The summary: (key, label, which way is better).
ROWS = (
    ("drain_1x10", "drain 1x10, jobs/s", "higher"),
    ("drain_2x10", "drain 2x10, jobs/s", "higher"),
    ("enqueue_single", "enqueue, one per call, jobs/s", "higher"),
    ("enqueue_bulk", "enqueue, bulk of 5,000, jobs/s", "higher"),
    ("latency_p50", "idle latency p50, ms", "lower"),
    ("latency_p99", "idle latency p99, ms", "lower"),
    ("overload_critical_p99", "overload: critical wait p99, ms", "lower"),
    ("overload_medium_p50", "overload: medium wait p50, ms", "lower"),
    ("overload_capacity", "overload: capacity, jobs/s", "higher"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks --peers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_BENCH_DSN", DEFAULT_ADMIN_DSN),
                   help="admin DSN of the server (env ANGELA_QUEUE_BENCH_DSN)")
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat, 8 s of overload")
    p.add_argument("--systems", default=",".join(systems_mod.ALL),
                   help=f"comma-separated, from {','.join(systems_mod.ALL)} (default: all)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections, from {','.join(SECTIONS)}")
    p.add_argument("-n", "--tasks", type=int, help="jobs per drain (default 10,000; quick 2,000)")
    p.add_argument("--repeat", type=int, help="runs of each drain per system (default 2; quick 1); the median is shown")
    p.add_argument("--enqueue-single", type=int, help="enqueue calls, one job each (default 3,000; quick 500)")
    p.add_argument("--enqueue-bulk-calls", type=int, help="bulk calls of 5,000 jobs (default 4; quick 1)")
    p.add_argument("--latency-tasks", type=int, help="jobs in the idle-latency run (default 300; quick 100)")
    p.add_argument("--latency-rate", type=float, default=50.0, help="enqueues per second (default 50)")
    p.add_argument("--overload-seconds", type=float, help="how long the overload producer runs (default 30; quick 8)")
    p.add_argument("--overload-factor", type=float, default=1.5,
                   help="producer rate as a multiple of the worker's nominal capacity (default 1.5)")
    p.add_argument("--seed", type=int, default=13, help="seed of the overload's tier sequence")
    p.add_argument("--analyze-every", type=float, default=workloads.ANALYZE_EVERY_S, metavar="SECONDS",
                   help="during latency and overload, ANALYZE each system's claim table this often, a stand-in "
                        "for autovacuum on a busy queue (default 2; 0: never)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement, wait up to SECONDS for the machine to be less than "
                        "--quiet-below %% busy (default 0: don't wait)")
    p.add_argument("--quiet-below", type=float, default=20.0, metavar="PCT")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<time>-peers-<mode>.json)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the databases")
    args = p.parse_args(argv)
    for name, allowed in (("systems", systems_mod.ALL), ("only", SECTIONS)):
        unknown = set(getattr(args, name).split(",")) - set(allowed)
        if unknown:
            p.error(f"--{name}: unknown {', '.join(sorted(unknown))}")
    return args


def size(args: argparse.Namespace, name: str, given: Any) -> Any:
    return given if given is not None else SIZES[name][0 if args.quick else 1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quiet(args: argparse.Namespace) -> dict[str, float]:
    if args.quiet_wait <= 0:
        return {}
    busy, waited = wait_for_quiet(args.quiet_wait, args.quiet_below)
    return {"busy_before_pct": busy, "waited_for_quiet_s": waited}


def _mark(res: dict[str, Any]) -> str:
    return "" if res.get("verified") else "  NOT VERIFIED: " + "; ".join(res.get("problems", []))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = args.systems.split(",")
    sections = [s for s in SECTIONS if s in args.only.split(",")]
    systems_mod.require_peers(keys)
    mode = "quick" if args.quick else "full"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sizes = {
        "drain_n": size(args, "drain_n", args.tasks), "repeat": size(args, "repeat", args.repeat),
        "enqueue_single_n": size(args, "enqueue_single_n", args.enqueue_single),
        "enqueue_bulk_calls": size(args, "enqueue_bulk_calls", args.enqueue_bulk_calls),
        "enqueue_bulk_size": workloads.BULK_SIZE,
        "latency_n": size(args, "latency_n", args.latency_tasks), "latency_rate": args.latency_rate,
        "overload_s": size(args, "overload_s", args.overload_seconds), "overload_factor": args.overload_factor,
        "analyze_every_s": args.analyze_every,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = args.out or RESULTS_DIR / f"{stamp}-peers-{mode}.json"
    results: dict[str, Any] = {
        "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks --peers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sizes": sizes, "sections": sections,
    }
    chosen = [systems_mod.ALL[k](args.dsn, keep=args.keep_db) for k in keys]
    by_key = {s.key: s for s in chosen}
    # The reference loop and plain INSERTs run on angela-queue's table: its database, if it is measured.
    ref_host = by_key.get("aq") or systems_mod.AngelaQueue(args.dsn, keep=args.keep_db)
    needs_ref = any(s in sections for s in ("reference", "enqueue"))
    created: list[systems_mod.System] = []
    began = time.monotonic()
    try:
        for s in chosen + ([ref_host] if needs_ref and ref_host not in chosen else []):
            log(f"{s.label}: creating database {s.db.name} and installing its schema ...")
            s.setup()
            created.append(s)
        results["machine"] = machine_info(created[0].db)
        m = results["machine"]
        log(f"machine: {m['cpu_logical']} cores ({m['cpu_model']}), PostgreSQL {m['postgres']}, "
            f"Python {m['python']}, load {m['loadavg_at_start']}")
        results["systems"] = {s.key: s.describe() for s in chosen}
        if "drain" in sections or "reference" in sections:
            results["drain"] = run_drains(args, chosen, ref_host, sections, sizes)
        if "enqueue" in sections:
            results["enqueue"] = {}
            for s in chosen:
                log(f"enqueue: {s.label} ...")
                res = workloads.run_enqueue(s, sizes["enqueue_single_n"], sizes["enqueue_bulk_calls"])
                res.update(quiet(args))
                results["enqueue"][s.key] = res
                log(f"  {s.label:<14} one per call {res['single']['tps']:,.0f}/s, bulk {res['bulk']['tps']:,.0f}/s"
                    f"{_mark(res)}")
            results["enqueue"]["reference"] = workloads.run_enqueue_reference(
                ref_host, sizes["enqueue_single_n"], sizes["enqueue_bulk_calls"])
        if "latency" in sections:
            results["latency"] = {}
            for s in chosen:
                log(f"idle latency: {s.label}, {sizes['latency_n']} jobs at {args.latency_rate:g}/s ...")
                before = quiet(args)
                res = workloads.run_latency(s, sizes["latency_n"], args.latency_rate,
                                            analyze_every_s=args.analyze_every)
                res.update(before)
                results["latency"][s.key] = res
                d = res["from_call_ms"]
                log(f"  {s.label:<14} p50 {d.get('p50', float('nan')):.2f} ms, p99 {d.get('p99', float('nan')):.2f} ms"
                    f"{_mark(res)}")
        if "overload" in sections:
            results["overload"] = {}
            for s in chosen:
                log(f"overload: {s.label}, {sizes['overload_s']:g} s at {args.overload_factor:g}x capacity ...")
                before = quiet(args)
                res = workloads.run_overload(s, sizes["overload_s"], args.overload_factor, seed=args.seed,
                                             analyze_every_s=args.analyze_every)
                res.update(before)
                results["overload"][s.key] = res
                w = res["wait_ms"]
                log(f"  {s.label:<14} critical p99 {w['critical'].get('p99', float('nan')):,.1f} ms, medium p50 "
                    f"{w['medium'].get('p50', float('nan')):,.1f} ms, capacity {res.get('capacity_per_s') or 0:,.0f}/s"
                    f"{_mark(res)}")
    finally:
        results["seconds"] = round(time.monotonic() - began, 1)
        results.setdefault("machine", {})["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        for s in created:
            try:
                s.teardown()
            except Exception as exc:  # a drop must not hide the run's own error
                log(f"could not drop {s.db.name}: {exc}")
        results["summary"] = summarize(results, [s.key for s in chosen])
        results["failures"] = failures(results)
        results["verified"] = not results["failures"]
        out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print(report(results, chosen))
    print(f"\nresults: {out_path}")
    return 0 if results["verified"] else 1


def run_drains(args: argparse.Namespace, chosen: list[systems_mod.System], ref_host: systems_mod.System,
               sections: list[str], sizes: dict[str, Any]) -> dict[str, Any]:
    n, repeat = sizes["drain_n"], sizes["repeat"]
    runs: list[dict[str, Any]] = []
    ref_runs: list[dict[str, Any]] = []
    log(f"drain: {n:,} no-op jobs, {repeat} run(s) of each")
    for r in range(repeat):
        # Take turns, and start each round with another system.
        order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
        for processes, concurrency in DRAIN_CONFIGS:
            if "drain" in sections:
                for s, variant in [(sys_, v) for sys_ in order for v in (None, *sys_.drain_variants)]:
                    before = quiet(args)
                    res = workloads.run_drain(s, processes, concurrency, n, variant)
                    res.update(before, run=r + 1)
                    runs.append(res)
                    cpu = res.get("cpu") or {}
                    log(f"  {_label(s.label, variant):<14} {processes}x{concurrency} run {r + 1}/{repeat}: "
                        f"{res.get('tps') or 0:,.0f} jobs/s (startup {res.get('startup_s') or 0:.2f} s; "
                        f"others used {cpu.get('other_cores', float('nan')):.2f} cores){_mark(res)}")
            if "reference" in sections:
                cfg = drain_mod.DrainConfig(f"ref claim 10 ({processes} proc{'s' if processes > 1 else ''})",
                                            "reference", processes, 10, mode="simple")
                before = quiet(args)
                res = drain_mod.run_drain(ref_host.db, cfg, n)
                res.update(before, run=r + 1)
                ref_runs.append(res)
                log(f"  {cfg.label:<25} run {r + 1}/{repeat}: {res.get('tps') or 0:,.0f} tasks/s"
                    f"{'' if res['verified'] else '  NOT VERIFIED: ' + str(res.get('error'))}")
    return {"runs": runs, "reference_runs": ref_runs, "summary": aggregate(runs, ref_runs)}


def _label(label: str, variant: str | None) -> str:
    return label if variant is None else f"{label} ({variant})"


def aggregate(runs: list[dict[str, Any]], ref_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str | None, int, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["system"], r.get("variant"), r["processes"], r["concurrency"]), []).append(r)
    for r in ref_runs:
        groups.setdefault(("reference", None, r["processes"], r["concurrency"]), []).append(r)
    out = []
    for (system, variant, procs, conc), rs in groups.items():
        tps = [r["tps"] for r in rs if r.get("tps")]
        cpu = [r["cpu"] for r in rs if r.get("cpu")]

        out.append({
            "system": system, "variant": variant, "processes": procs, "concurrency": conc, "runs": len(rs),
            "verified": all(r["verified"] for r in rs),
            "tps_median": median(tps) if tps else None, "tps_min": min(tps) if tps else None,
            "tps_max": max(tps) if tps else None, "tps_spread_pct": spread_pct(tps) if tps else None,
            "startup_s_median": median([r["startup_s"] for r in rs if r.get("startup_s") is not None] or [0.0]),
            "worker_py_us_per_job": _cpu_median(cpu, "worker_py_us_per_job") if system != "reference" else None,
            "db_and_suite_us_per_job": _cpu_median(cpu, "db_and_suite_us_per_job"),
            "other_cores": _cpu_median(cpu, "other_cores"),
        })
    return out


def _cpu_median(cpu: list[dict[str, Any]], key: str) -> float | None:
    vals = [c[key] for c in cpu if c.get(key) is not None]
    return median(vals) if vals else None


# --- the summary --------------------------------------------------------------

def _cell(value: float | None, verified: bool) -> dict[str, Any]:
    return {"value": value, "verified": verified}


def summarize(results: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """{row: {system or 'reference': {value, verified}}}: the table's figures, with their checks."""
    table: dict[str, dict[str, Any]] = {row: {} for row, _, _ in ROWS}
    for d in results.get("drain", {}).get("summary", []):
        row = f"drain_{d['processes']}x{d['concurrency']}"
        if row in table and d.get("variant") is None:
            table[row][d["system"]] = _cell(d["tps_median"], d["verified"])
    for key, e in results.get("enqueue", {}).items():
        table["enqueue_single"][key] = _cell(e["single"]["tps"], e["single"].get("verified", True))
        table["enqueue_bulk"][key] = _cell(e["bulk"]["tps"], e["bulk"].get("verified", True))
    for key, lat in results.get("latency", {}).items():
        table["latency_p50"][key] = _cell(lat["from_call_ms"].get("p50"), lat["verified"])
        table["latency_p99"][key] = _cell(lat["from_call_ms"].get("p99"), lat["verified"])
    for key, o in results.get("overload", {}).items():
        table["overload_critical_p99"][key] = _cell(o["wait_ms"]["critical"].get("p99"), o["verified"])
        table["overload_medium_p50"][key] = _cell(o["wait_ms"]["medium"].get("p50"), o["verified"])
        table["overload_capacity"][key] = _cell(o.get("capacity_per_s"), o["verified"])
    if results.get("overload"):
        nominal = next(iter(results["overload"].values()))["nominal_capacity_per_s"]
        table["overload_capacity"]["reference"] = _cell(nominal, True)
    for row, _, better in ROWS:
        cells = table[row]
        peers = {k: c for k, c in cells.items() if k not in ("aq", "reference") and k in keys
                 and c["value"] is not None}
        best = None
        if peers:
            pick = max if better == "higher" else min
            best = pick(peers, key=lambda k: peers[k]["value"])
        cells["_best_peer"] = best
        aq = cells.get("aq", {}).get("value")
        cells["_aq_vs_best_peer"] = aq / peers[best]["value"] if aq and best and peers[best]["value"] else None
        ref = cells.get("reference", {}).get("value")
        cells["_vs_reference"] = {k: c["value"] / ref for k, c in cells.items()
                                  if not k.startswith("_") and k != "reference" and c["value"] and ref}
    return table


def failures(results: dict[str, Any]) -> list[str]:
    found = []
    for r in results.get("drain", {}).get("runs", []):
        if not r["verified"]:
            found.append(f"drain {_label(r['system'], r.get('variant'))} {r['processes']}x{r['concurrency']} "
                         f"run {r['run']}: "
                         + "; ".join(r["problems"]))
    for r in results.get("drain", {}).get("reference_runs", []):
        if not r["verified"]:
            found.append(f"{r['label']} run {r['run']}: {r.get('error') or 'counts do not add up'}")
    for section in ("enqueue", "latency", "overload"):
        for key, r in results.get(section, {}).items():
            if key == "reference":
                continue
            if not r.get("verified"):
                problems = r.get("problems") or [p for part in ("single", "bulk")
                                                 for p in r.get(part, {}).get("problems", [])]
                found.append(f"{section} {key}: " + "; ".join(problems))
    return found


def _fmt(value: float | None, row: str) -> str:
    if value is None:
        return "-"
    if row.startswith(("latency", "overload_critical", "overload_medium")):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report(results: dict[str, Any], chosen: list[systems_mod.System]) -> str:
    m = results.get("machine", {})
    sz = results["sizes"]
    labels = {s.key: s.label for s in chosen}
    versions = ", ".join(f"{s.label} {s.version()}" for s in chosen)
    parts = [
        f"angela-queue and its peers ({results['mode']}): {results['command']}",
        f"machine: {m.get('cpu_logical')} logical cores ({m.get('cpu_model')}), {m.get('ram_gib')} GiB RAM; "
        f"PostgreSQL {m.get('postgres')} "
        f"({', '.join(f'{k}={v}' for k, v in sorted(m.get('postgres_settings', {}).items()))})",
        f"Python {m.get('python')}; {versions}; angela-queue @ {m.get('git_commit')}"
        f"{' + uncommitted changes ' + m['git_diff_sha1'] if m.get('git_diff_sha1') else ''}",
        f"load average {m.get('loadavg_at_start')} at start, {m.get('loadavg_at_end')} at end; {results['seconds']} s",
        "",
    ]
    how = []
    if results.get("drain", {}).get("runs"):
        how.append(f"drains: median of {sz['repeat']} run(s) of {sz['drain_n']:,} no-op jobs")
    if results.get("enqueue"):
        how.append(f"enqueue: {sz['enqueue_single_n']:,} calls, then {sz['enqueue_bulk_calls']} x 5,000")
    if results.get("latency"):
        how.append(f"latency: {sz['latency_n']} jobs at {sz['latency_rate']:g}/s, enqueue call -> handler start")
    if results.get("overload"):
        how.append(f"overload: {sz['overload_s']:g} s at {sz['overload_factor']:g}x of 4 slots x 20 ms")
    parts.append(f"Summary ({'; '.join(how)}). '!' marks a figure whose exactly-once check failed.")
    summary = results.get("summary", {})
    keys = [s.key for s in chosen]
    headers = ["workload", "better", *(labels[k] for k in keys), "best peer", "aq / best peer", "reference",
               "aq / reference"]
    rows = []
    for row, label, better in ROWS:
        cells = summary.get(row, {})
        if not any(k in cells for k in keys):
            continue
        values = []
        for k in keys:
            c = cells.get(k)
            values.append("-" if c is None else _fmt(c["value"], row) + ("" if c["verified"] else " !"))
        ref = cells.get("reference")
        rows.append([label, better, *values, labels.get(cells.get("_best_peer"), "-"),
                     _ratio(cells.get("_aq_vs_best_peer")), "-" if ref is None else _fmt(ref["value"], row),
                     _ratio(cells.get("_vs_reference", {}).get("aq"))])
    parts.append(table(headers, rows))
    parts.append("reference: the lean psycopg loop (claim 10 / complete 10, prepared; 1 and 2 processes) for the "
                 "drains, plain prepared INSERTs into angela_queue.tasks for enqueue, and the nominal 200 jobs/s "
                 "(4 slots / 20 ms) for overload capacity.")
    variants = [d for d in results.get("drain", {}).get("summary", []) if d.get("variant")]
    for s in chosen:
        for name, what in s.drain_variants.items():
            figures = ", ".join(f"{d['processes']}x{d['concurrency']} {_fmt(d['tps_median'], '')}"
                                for d in variants if d["system"] == s.key and d["variant"] == name)
            if figures:
                parts.append(f"{_label(s.label, name)} drains: {figures} jobs/s; {what}.")

    if results.get("drain"):
        parts += ["", "Drains (jobs/s from the first handler start to the last handler finish; median, min..max)",
                  table(["system", "config", "runs", "jobs/s", "min..max", "spread", "startup s", "worker py µs/job",
                         "db+suite µs/job", "others' cores", "verified"],
                        [[_label(labels.get(d["system"], d["system"]), d.get("variant")),
                          f"{d['processes']}x{d['concurrency']}", d["runs"],
                          _fmt(d["tps_median"], ""), f"{_fmt(d['tps_min'], '')}..{_fmt(d['tps_max'], '')}",
                          f"{d['tps_spread_pct'] or 0:.0f}%", f"{d['startup_s_median']:.2f}",
                          _fmt(d["worker_py_us_per_job"], ""), _fmt(d["db_and_suite_us_per_job"], ""),
                          "-" if d["other_cores"] is None else f"{d['other_cores']:.2f}",
                          "yes" if d["verified"] else "NO"] for d in results["drain"]["summary"]])]
    if results.get("enqueue"):
        rows = []
        for key, e in results["enqueue"].items():
            for part in ("single", "bulk"):
                r = e[part]
                rows.append([labels.get(key, "reference (plain INSERT)"), part, f"{r['jobs']:,}", _fmt(r["tps"], ""),
                             "-" if not r.get("call_ms") else f"{r['call_ms']['p50']:.2f}",
                             "-" if not r.get("call_ms") else f"{r['call_ms']['p99']:.2f}",
                             "-" if key == "reference" else ("yes" if r["verified"] else "NO")])
        parts += ["", "Enqueue (no worker running; 'verified': every job stored, once)",
                  table(["system", "how", "jobs", "jobs/s", "call p50 ms", "call p99 ms", "verified"], rows)]
    if results.get("latency"):
        rows = []
        for key, lat in results["latency"].items():
            for name, dist in (("from enqueue call", "from_call_ms"), ("from enqueue return", "from_return_ms"),
                               ("enqueue call itself", "enqueue_call_ms")):
                d = lat[dist]
                rows.append([labels[key], name, *(f"{d[k]:.2f}" if d else "-" for k in ("p50", "p90", "p99", "max")),
                             "yes" if lat["verified"] else "NO"])
        parts += ["", "Idle latency to handler start, ms (1 worker, concurrency 10, one job per enqueue call)",
                  table(["system", "measured", "p50", "p90", "p99", "max", "verified"], rows)]
    if results.get("overload"):
        rows = []
        for key, o in results["overload"].items():
            w = o["wait_ms"]
            rows.append([labels[key], f"{o['achieved_rate_per_s']:.0f}/{o['target_rate_per_s']:.0f}",
                         *(f"{w[t].get('p50', 0):,.1f} / {w[t].get('p99', 0):,.1f}" for t in workloads.TIERS),
                         _fmt(o.get("capacity_per_s"), ""), f"{o.get('backlog_at_end', 0):,}",
                         "yes" if o["verified"] else "NO"])
        parts += ["", "Overload: wait from enqueue call to handler start, p50 / p99 ms, per tier "
                      "(1 worker, concurrency 4, 20 ms jobs)",
                  table(["system", "rate achieved/target", *workloads.TIERS, "capacity/s", "backlog at end",
                         "verified"], rows)]
    if results.get("failures"):
        parts += ["", "!" * 78, "EXACTLY-ONCE CHECK FAILED:", *(f"  - {f}" for f in results["failures"]), "!" * 78]
    else:
        parts += ["", "Exactly-once: every job of every workload ran exactly once, and each system's tables agree."]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
