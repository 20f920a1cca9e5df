"""angela-queue side by side with its peers: ``python -m benchmarks --peers``.

pgqueuer, procrastinate and chancy (``pip install -e '.[bench]'``), each with
its documented API and fastest documented settings, in its own fresh
database, on the same workloads as angela-queue: drain, enqueue, idle
latency and overload. Every job's run is checked to have happened exactly
once. See benchmarks/README.md ("Peers").

Modules: ``run`` (the command, the table), ``workloads`` (the four
workloads and the exactly-once check), ``systems`` (one adapter per queue),
``recorder`` (what every job does), and one app module per system that its
worker processes import.
"""
