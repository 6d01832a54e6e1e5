"""``pairq admin``: build :class:`~pairq.admin.AdminOptions`, run the console until SIGTERM.

Options come from flags, ``PAIRQ_ADMIN_*`` (and ``PAIRQ_LOOKUP``, ``PAIRQ_TOKEN``) and a
TOML file (``--config``), validated as one (``pairq.cli._daemon``, as for the broker and
the lookup); ``--check-config FILE`` validates without starting anything.
"""

from __future__ import annotations

import argparse
import sys

from pairq.admin import Admin, AdminOptions
from pairq.cli._daemon import add_daemon_flags, run_daemon

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "admin",
        help="run the web console (nodes, pairs, topics, channels, actions) and its JSON API",
        description="Run the pairq web console: it polls every lookup and broker and serves "
        "pages and /api/ JSON; actions (pause, empty, delete, tombstone, peek, dead-letter "
        "redrive and purge, test publish) ask for confirmation and are audit-logged.",
    )
    add_daemon_flags(p, AdminOptions)
    p.set_defaults(func=run_admin)


def run_admin(args: argparse.Namespace) -> int:
    return run_daemon("admin", AdminOptions, args, _start)


async def _start(opts: AdminOptions) -> Admin:
    admin = Admin(opts)
    try:
        await admin.start()
    except OSError as exc:
        await admin.stop()
        raise OSError(f"cannot serve on {opts.address}: {exc.strerror or exc}") from None
    print(f"pairq admin listening on {admin.url}", file=sys.stderr, flush=True)
    return admin
