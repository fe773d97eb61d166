"""Spillway beside the Python task queues it competes with, on one machine, in one run.

``python -m bench.peers [--quick]`` runs, per library, on its own throw-away redis-server:
enqueueing from Python (one by one, concurrently, batched), a 20,000 no-op drain by one worker
process, and the seed's workload (2,000 x ``sleep(0.5)`` at concurrency 500). Each peer module
declares its tasks the way its library's docs say and is driven in subprocesses, so no library's
globals leak into another's run.
"""
