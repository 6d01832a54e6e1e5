"""``pairq admin``: the web console and JSON API over lookups and brokers.

``options.py`` holds every setting (``AdminOptions``: the flags, ``PAIRQ_ADMIN_*``
and TOML keys of ``pairq admin``, and their rules); ``server.py`` is the aiohttp
application (routes, confirmation, the JSON API);
``cluster.py`` polls the cluster and carries out actions; ``pages.py`` renders
HTML; ``rates.py`` is the pure rate history behind the charts; ``audit.py`` the
audit log. Run it with ``pairq admin --lookup HOST:PORT``; in a program::

    admin = Admin(AdminOptions(address="127.0.0.1:0", lookup=("127.0.0.1:4160",)))
    await admin.start(); print(admin.url); ...; await admin.stop()
"""

from __future__ import annotations

from pairq.admin.options import AdminOptions
from pairq.admin.server import Admin

__all__ = ["Admin", "AdminOptions"]
