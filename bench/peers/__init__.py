"""Minimal apps of the peer task queues (Celery, RQ, Dramatiq, Huey, arq) for the benchmarks.

Each module reads its Redis URL from BENCH_REDIS_URL at import, because the
peers' workers import the app by module path in a fresh process.
"""
