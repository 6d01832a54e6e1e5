"""Security for every pairq link: the pair's secret (``pairauth``), bearer tokens
and per-topic permissions (``auth``), TLS credentials (``tls``).

Each module is usable on its own; nothing here imports the broker or the client.
"""
