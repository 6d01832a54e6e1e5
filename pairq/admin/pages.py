"""The console's HTML: plain server-rendered pages over a :class:`Snapshot`.

No template engine and no outside asset: every page links ``/static/admin.css``
and ``/static/admin.js`` served by the console itself, charts are inline SVG
drawn here. Every value is escaped. Actions are ``<form method=post
action=/action>`` that the server answers with a confirmation page first (see
``server.py``), so they work without JavaScript too.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Sequence
from typing import Any

from pairq.admin.cluster import Snapshot

__all__ = ["NAV", "chart", "page"]

NAV = (
    ("/", "Overview"),
    ("/nodes", "Nodes"),
    ("/pairs", "Pairs"),
    ("/topics", "Topics"),
    ("/lookups", "Lookups & gossip"),
    ("/audit", "Audit log"),
)


def e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def page(
    title: str,
    body: str,
    *,
    path: str,
    refresh: bool = True,
    flash: str = "",
    logout: bool = False,
) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if href == path else ""}>{e(label)}</a>'
        for href, label in NAV
    )
    if logout:
        nav += (
            '<form method="post" action="/logout" class="logout">'
            '<button type="submit" id="logout">Log out</button></form>'
        )
    fl = f'<p class="flash" id="flash">{e(flash)}</p>' if flash else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pairq admin: {e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/admin.css"><script src="/static/admin.js" defer></script>
</head><body data-refresh="{"on" if refresh else "off"}">
<header><span class="brand">pairq admin</span><nav>{nav}</nav></header>
{fl}<main id="live"><h1>{e(title)}</h1>
{body}
</main></body></html>"""


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "") -> str:
    """``rows`` cells are already HTML (escape with :func:`e`)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">none</td></tr>'
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def state(s: str) -> str:
    return f'<span class="state {e(s)}">{e(s)}</span>'


def rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}/s"


def action_form(verb: str, label: str, danger: bool = False, **fields: str) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items()
    )
    cls = "danger" if danger else ""
    return (
        f'<form method="post" action="/action" class="inline">'
        f'<input type="hidden" name="verb" value="{e(verb)}">{hidden}'
        f'<button type="submit" class="{cls}" data-verb="{e(verb)}">{e(label)}</button></form>'
    )


def chart(
    points: list[tuple[float, float]], *, title: str, width: int = 520, height: int = 110
) -> str:
    """A rate-over-time line as inline SVG (no script, no outside asset)."""
    if len(points) < 2:
        return f'<figure class="chart"><figcaption>{e(title)}</figcaption><p class="empty">collecting…</p></figure>'
    t0, t1 = points[0][0], points[-1][0]
    top = max(max(v for _, v in points), 1.0)
    span = max(t1 - t0, 1e-9)
    pts = " ".join(
        f"{(t - t0) / span * (width - 40) + 35:.1f},{height - 15 - v / top * (height - 25):.1f}"
        for t, v in points
    )
    return (
        f'<figure class="chart"><figcaption>{e(title)} (last {span:.0f} s, now {points[-1][1]:.1f}/s)</figcaption>'
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<line x1="35" y1="{height - 15}" x2="{width - 5}" y2="{height - 15}" class="axis"/>'
        f'<line x1="35" y1="5" x2="35" y2="{height - 15}" class="axis"/>'
        f'<text x="2" y="14" class="tick">{top:.0f}</text><text x="2" y="{height - 15}" class="tick">0</text>'
        f'<polyline points="{pts}" class="line"/></svg></figure>'
    )


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "never"


# ------------------------------------------------------------------ pages
def overview(snap: Snapshot, charts: str) -> str:
    o = snap.overview()
    alerts = "".join(f"<li>{e(a)}</li>" for a in o["alerts"]) or '<li class="ok">no alerts</li>'
    pairs = table(
        ["pair", "status", "brokers", "problems"],
        (
            [
                e(p["name"]),
                state(p["status"]),
                " ".join(
                    state(b["state"]) + " " + e(b["node_id"] or b["address"]) for b in p["brokers"]
                ),
                e("; ".join(p["problems"]) or "-"),
            ]
            for p in snap.pairs
        ),
        cls="pairs",
    )
    return f"""
<p class="summary" id="summary">
<span>nodes <b id="nodes-alive">{o["nodes_alive"]}</b>/<b>{o["nodes"]}</b> alive</span>
<span>pairs <b id="pairs-healthy">{o["pairs_healthy"]}</b>/<b>{o["pairs"]}</b> healthy</span>
<span>topics <b id="topic-count">{o["topics"]}</b></span>
<span>channels <b id="channel-count">{o["channels"]}</b></span>
<span>depth <b>{o["depth"]}</b></span>
<span>lookups <b>{o["lookups_up"]}</b>/<b>{o["lookups"]}</b> answering</span>
<span class="muted">as of {_when(snap.taken_at)}</span></p>
<h2>Alerts</h2><ul class="alerts" id="alerts">{alerts}</ul>
<h2>Pairs</h2>{pairs}
<h2>Rates</h2>{charts}"""


def nodes(snap: Snapshot) -> str:
    rows = []
    for n in snap.nodes:
        rows.append(
            [
                e(n["node_id"] or "?"),
                e(n["pair"] or "-"),
                e(n["address"]),
                state(n["state"]),
                e(n["lookup_liveness"])
                + ("" if n["listed_by_lookups"] or not n["node_id"] else " (dropped)"),
                e(n["gossip_state"]),
                e(n["version"] or "-"),
                e(n["health"])
                + (f' <span class="muted">{e(n["error"])}</span>' if n["error"] else ""),
                e(", ".join(n["topics"]) or "-"),
                e(", ".join(n["tombstones"]) or "-"),
                f"{n['store_bytes'] / 2**20:.1f} MiB",
            ]
        )
    return table(
        [
            "node",
            "pair",
            "address",
            "state",
            "lookups say",
            "gossip",
            "version",
            "health",
            "topics",
            "tombstones",
            "store",
        ],
        rows,
        cls="nodes",
    )


def pairs(snap: Snapshot) -> str:
    out = []
    for p in snap.pairs:
        rows = []
        for b in p["brokers"]:
            if "replication" not in b:
                rows.append(
                    [e(b["node_id"] or "?"), e(b["address"]), state(b["state"])] + ["-"] * 9
                )
                continue
            refill = []
            if b["refill_sending"]:
                refill.append(f"sending {b['refill_sending']}")
            if b["refill_receiving"]:
                refill.append(f"receiving {b['refill_receiving']}")
            lease = (
                "solo"
                if b["solo"]
                else (f"{b['lease_remaining_ms']} ms" if b["lease_remaining_ms"] else "LAPSED")
            )
            rows.append(
                [
                    e(b["node_id"]),
                    e(b["address"]),
                    state(b["state"]),
                    state(b["replication"]) + f' <span class="muted">{e(b["link"])}</span>',
                    state(b["partner_replication"]),
                    e(lease),
                    e(b["epoch"]),
                    e(b["lag"]),
                    e(b["standby"]),
                    e(b["min_copies"]),
                    e(", ".join(refill) or "-"),
                    e(b["takeovers"]),
                ]
            )
        out.append(
            f'<section class="pair" data-pair="{e(p["name"])}"><h2>pair {e(p["name"])} {state(p["status"])}</h2>'
            + (f'<p class="problems">{e("; ".join(p["problems"]))}</p>' if p["problems"] else "")
            + table(
                [
                    "node",
                    "address",
                    "state",
                    "replication out",
                    "replication in",
                    "lease",
                    "epoch",
                    "1-copy lag",
                    "standby copies",
                    "min copies",
                    "re-fill",
                    "takeovers",
                ],
                rows,
            )
            + "</section>"
        )
    return "".join(out) or '<p class="empty">no pairs known</p>'


def topics(snap: Snapshot) -> str:
    rows = []
    for t in snap.topics:
        per = ", ".join(f"{b['node_id']}: {b['depth']}" for b in t["per_broker"])
        rows.append(
            [
                f'<a href="/topics/{e(t["name"])}">{e(t["name"])}</a>',
                e(t["depth"]),
                e(per),
                e(t["message_count"]),
                e(rate(t["rate"])),
                e(len(t["channels"])),
                "paused" if t["paused"] else "",
            ]
        )
    form = """<h2>Publish a test message</h2>
<form method="post" action="/action" class="publish"><input type="hidden" name="verb" value="publish">
<label>topic <input name="topic" required></label> <label>body <input name="body" required></label>
<label>headers (k=v, one per line) <textarea name="headers" rows="1"></textarea></label>
<button type="submit">Publish…</button></form>"""
    return (
        table(
            [
                "topic",
                "depth",
                "depth per broker",
                "messages",
                "publish rate",
                "channels",
                "paused",
            ],
            rows,
            cls="topics",
        )
        + form
    )


def topic(snap: Snapshot, t: dict[str, Any], charts: str) -> str:
    name = t["name"]
    per = table(
        ["broker", "pair", "address", "depth", "messages", "paused", ""],
        (
            [
                e(b["node_id"]),
                e(b["pair"] or "-"),
                e(b["address"]),
                e(b["depth"]),
                e(b["message_count"]),
                "paused" if b["paused"] else "",
                action_form("tombstone", "Tombstone here", True, topic=name, node=b["node_id"]),
            ]
            for b in t["per_broker"]
        ),
    )
    chans = table(
        [
            "channel",
            "depth",
            "in flight",
            "deferred",
            "requeued",
            "timed out",
            "dead letters",
            "delivered",
            "rate",
            "clients",
            "paused",
        ],
        (
            [
                f'<a href="/topics/{e(name)}/{e(c["name"])}">{e(c["name"])}</a>',
                e(c["depth"]),
                e(c["in_flight"]),
                e(c["deferred"]),
                e(c["requeued"]),
                e(c["timed_out"]),
                e(c["dead_lettered"]),
                e(c["message_count"]),
                e(rate(c["rate"])),
                e(len(c["clients"])),
                '<span class="paused">paused</span>' if c["paused"] else "",
            ]
            for c in t["channels"]
        ),
        cls="channels",
    )
    pause = (
        action_form("unpause-topic", "Unpause topic", topic=name)
        if t["paused"]
        else action_form("pause-topic", "Pause topic", topic=name)
    )
    actions = (
        pause
        + action_form("empty-topic", "Empty topic", True, topic=name)
        + action_form("delete-topic", "Delete topic", True, topic=name)
    )
    return f"""<p class="summary">depth <b id="topic-depth">{t["depth"]}</b> · messages {t["message_count"]} ·
publish rate {rate(t["rate"])} · {"<b class=paused>paused</b>" if t["paused"] else "delivering"}</p>
<div class="actions">{actions}</div>
<h2>Brokers</h2>{per}<h2>Channels</h2>{chans}<h2>Rates</h2>{charts}"""


def channel(snap: Snapshot, c: dict[str, Any], dead: list[dict[str, Any]], charts: str) -> str:
    t, name = c["topic"], c["name"]
    kv = "".join(
        f'<span>{e(label)} <b id="ch-{e(k)}">{e(c[k])}</b></span>'
        for k, label in (
            ("depth", "depth"),
            ("in_flight", "in flight"),
            ("deferred", "deferred"),
            ("requeued", "requeued"),
            ("timed_out", "timed out"),
            ("dead_lettered", "dead letters"),
            ("message_count", "delivered"),
            ("finished", "finished"),
        )
    )
    paused = (
        '<b class="paused" id="ch-paused">paused</b>'
        if c["paused"]
        else '<span id="ch-paused">delivering</span>'
    )
    pause = (
        action_form("unpause-channel", "Unpause channel", topic=t, channel=name)
        if c["paused"]
        else action_form("pause-channel", "Pause channel", topic=t, channel=name)
    )
    actions = (
        pause
        + action_form("empty-channel", "Empty channel", True, topic=t, channel=name)
        + action_form("delete-channel", "Delete channel", True, topic=t, channel=name)
        + action_form("peek", "Peek at messages", topic=t, channel=name, limit="20")
    )
    per = table(
        ["broker", "address", "depth", "in flight", "dead letters", "paused"],
        (
            [
                e(b["node_id"]),
                e(b["address"]),
                e(b["depth"]),
                e(b["in_flight"]),
                e(b["dead_lettered"]),
                "paused" if b["paused"] else "",
            ]
            for b in c["per_broker"]
        ),
    )
    clients = table(
        [
            "broker",
            "client",
            "host",
            "agent",
            "address",
            "RDY",
            "in flight",
            "delivered",
            "finished",
            "requeued",
        ],
        (
            [
                e(cl[k])
                for k in (
                    "broker",
                    "client_id",
                    "hostname",
                    "user_agent",
                    "remote_address",
                    "ready_count",
                    "in_flight",
                    "message_count",
                    "finish_count",
                    "requeue_count",
                )
            ]
            for cl in c["clients"]
        ),
        cls="clients",
    )
    dead_rows = (
        [
            f'<input type="checkbox" name="ids" value="{e(m["id"])}" form="dlq-selected">',
            f"<code>{e(m['id'])}</code>",
            e(m["broker_id"]),
            e(m["attempts"]),
            f"<code>{e(m['body'][:200])}</code>",
            e(", ".join(f"{k}={v}" for k, v in m["headers"].items()) or "-"),
        ]
        for m in dead
    )
    dlq = f"""<h2>Dead letters (<span id="dlq-total">{c["dead_lettered"]}</span>)</h2>
<div class="actions">{action_form("redrive", "Redrive all", topic=t, channel=name)}
{action_form("purge", "Purge all", True, topic=t, channel=name)}
<form method="post" action="/action" id="dlq-selected" class="inline"><input type="hidden" name="verb" value="redrive">
<input type="hidden" name="topic" value="{e(t)}"><input type="hidden" name="channel" value="{e(name)}">
<button type="submit" data-verb="redrive-selected">Redrive selected</button>
<button type="submit" name="verb" value="purge" class="danger" data-verb="purge-selected">Purge selected</button></form></div>
{table(["", "id", "broker", "attempts", "body", "headers"], dead_rows, cls="dead")}"""
    return f"""<p class="summary">{kv} <span>{paused}</span> <span>rate {rate(c["rate"])}</span></p>
<p class="muted">End-to-end latency percentiles are not reported by the brokers yet.</p>
<div class="actions">{actions}</div>
<h2>Brokers</h2>{per}<h2>Clients</h2>{clients}{dlq}<h2>Rates</h2>{charts}"""


def lookups(snap: Snapshot) -> str:
    rows = [
        [
            e(lk["address"]),
            state("up" if lk["ok"] else "down"),
            e(lk.get("lookup_id", "-")),
            e("yes" if lk.get("gossip_enabled") else "no"),
            e(len(lk.get("members", []))),
            e(f"{lk['rtt_ms']} ms" if lk.get("rtt_ms") is not None else "-"),
            e(lk["error"] or "-"),
        ]
        for lk in snap.lookups
    ]
    out = table(
        ["lookup", "status", "id", "gossip", "brokers registered", "answered in", "error"],
        rows,
        cls="lookups",
    )
    for lk in snap.lookups:
        if not lk["ok"]:
            continue
        members = table(
            [
                "node",
                "pair",
                "address",
                "liveness",
                "gossip state",
                "registration stream",
                "last heard",
            ],
            (
                [
                    e(m["node_id"]),
                    e(m["pair"] or "-"),
                    e(m["address"]),
                    state(m["liveness"]),
                    e(m["gossip_state"]),
                    e("open" if m["connected"] else "closed"),
                    e(f"{m['last_seen_ms_ago'] / 1000:.1f} s ago"),
                ]
                for m in lk["members"]
            ),
        )
        out += f"<h2>Gossip members as lookup {e(lk.get('lookup_id', lk['address']))} sees them</h2>{members}"
    return out


def audit(entries: list[dict[str, Any]]) -> str:
    return table(
        ["when (UTC)", "who", "action", "target", "result"],
        (
            [
                e(a["time"]),
                e(a["who"]),
                e(a["action"]),
                e(", ".join(f"{k}={v}" for k, v in a["target"].items())),
                e(a["result"]),
            ]
            for a in entries
        ),
        cls="audit",
    )


def login(next_path: str, error: str) -> str:
    err = f'<p class="flash" id="login-error">{e(error)}</p>' if error else ""
    return f"""{err}<form method="post" action="/login" id="login-form">
<input type="hidden" name="next" value="{e(next_path)}">
<label>Token <input type="password" name="token" id="token" autocomplete="current-password"
required autofocus></label>
<button type="submit" id="login-submit">Log in</button></form>
<p>A token from this console's <code>--auth-file</code> (the same file format as the brokers').</p>"""


def confirm(verb: str, fields: list[tuple[str, str]], what: str, back: str) -> str:
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields)
    return f"""<p class="confirm" id="confirm-text">{e(what)}</p>
<form method="post" action="/action" id="confirm-form">{hidden}
<input type="hidden" name="confirm" value="yes"><input type="hidden" name="back" value="{e(back)}">
<button type="submit" id="confirm-yes" class="danger">Yes, {e(verb)}</button>
<a href="{e(back)}" id="confirm-no">Cancel</a></form>"""


def result(message: str, back: str, messages: list[dict[str, Any]] | None) -> str:
    out = f'<p class="result" id="result">{e(message)}</p><p><a href="{e(back)}" id="back">Back</a></p>'
    if messages is not None:
        out += table(
            ["id", "broker", "attempts", "timestamp", "body", "headers"],
            (
                [
                    f"<code>{e(m['id'])}</code>",
                    e(m["broker_id"]),
                    e(m["attempts"]),
                    e(
                        datetime.datetime.fromtimestamp(m["timestamp_ns"] / 1e9).isoformat(
                            timespec="seconds"
                        )
                    ),
                    f"<code>{e(m['body'][:500])}</code>",
                    e(", ".join(f"{k}={v}" for k, v in m["headers"].items()) or "-"),
                ]
                for m in messages
            ),
            cls="peek",
        )
    return out
