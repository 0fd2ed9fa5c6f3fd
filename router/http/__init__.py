"""The HTTP edge: the aiohttp application factory, its typed app keys, and every
handler with its auth (ingest, admin API, status page, health, metrics, reload).

Everything below the edge (services, engine, plugin contract) works without aiohttp
state and never imports this package; ``lint-imports`` checks it (pyproject.toml).
"""
