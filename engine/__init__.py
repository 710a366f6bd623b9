"""The generic durable-execution runtime on Redis.

Queues, leases with fencing tokens, the shared token-bucket rate limiter,
workers, producer and recovery loops. Nothing here knows about campaigns'
stages: ``engine`` never imports ``stages``; the application wires handlers to
task types (see ``campaignctl.wiring``).
"""
