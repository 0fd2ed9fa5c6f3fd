"""Local imitations of chat services for tests: real aiohttp servers on 127.0.0.1 that
enforce each service's documented contract (payload shape, size limits, errors in the
service's own format, throttling with the service's own headers)."""
