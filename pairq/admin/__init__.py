"""``pairq admin``: the web console and JSON API over lookups and brokers.

``options.py`` holds every setting (``AdminOptions``: the flags, ``PAIRQ_ADMIN_*``
and TOML keys of ``pairq admin``, and their rules); ``server.py`` is the aiohttp
application (routes, confirmation, the JSON API);
``cluster.py`` polls the cluster and carries out actions; ``pages.py`` renders
HTML; ``rates.py`` is the pure rate history behind the charts; ``audit.py`` the
audit log. Run it with ``pairq admin --lookup HOST:PORT``; in a program::

    admin = Admin(AdminOptions(address="127.0.0.1:0", lookup=("127.0.0.1:4160",)))
    await admin.start(); print(admin.url); ...; await admin.stop()

The names are loaded on first use, so ``pairq.admin.options`` (``python -m
pairq.admin.options`` prints ``deploy/admin.example.toml``) does not import aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pairq.admin.options import AdminOptions
    from pairq.admin.server import Admin

__all__ = ["Admin", "AdminOptions"]


def __getattr__(name: str) -> Any:
    if name == "Admin":
        from pairq.admin.server import Admin

        return Admin
    if name == "AdminOptions":
        from pairq.admin.options import AdminOptions

        return AdminOptions
    raise AttributeError(f"module 'pairq.admin' has no attribute {name!r}")
