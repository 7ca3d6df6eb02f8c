"""A mixed application context: system prompt, 30-turn history, a JSON tool result, a Python file, two documents.

Shared by the router and messages tests (not a test module itself)."""

from __future__ import annotations

import json

SYSTEM = (
    "You are SupportBot for Acme Cloud. Answer briefly, cite the runbook at https://runbooks.acme.example/db "
    "and escalate to oncall@acme.example when a database is down."
)

TOPICS = [
    ("billing", "the invoice for March looked higher than usual because of extra storage and egress traffic"),
    ("latency", "p99 latency of the checkout service rose after the deploy on Tuesday afternoon"),
    ("backups", "nightly backups of the orders database finished late twice this week"),
    ("access", "a new engineer needs read access to the analytics warehouse and the dashboards"),
    ("alerts", "the disk usage alert on node db-7 fired three times without a real incident"),
    ("migration", "we plan to migrate the session store from memcached to redis next quarter"),
]

PY_FILE = '''"""Retry helper used by the ingest workers."""
import random
import time


class RetryError(Exception):
    """Raised when every attempt failed."""


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def retry(fn, attempts: int = 5):
    """Call fn until it succeeds or attempts run out."""
    last = None
    for attempt in range(attempts):
        try:
            return fn()
        except ConnectionError as exc:
            last = exc
            time.sleep(backoff(attempt))
    raise RetryError(f"gave up after {attempts} attempts") from last


def chunked(items, size):
    """Yield successive chunks of items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
'''

TOOL_RESULT = {
    "cluster": "prod-eu-1",
    "status": "degraded",
    "nodes": [
        {"name": f"db-{i}", "role": "replica" if i else "primary", "lag_seconds": i * 3,
         "note": "replication healthy and within the usual limits for this time of day" if i % 3 else
         "replication slow because of a long running vacuum on the orders table"}
        for i in range(8)
    ],
    "incident": {"id": "INC-4821", "opened_by": "oncall@acme.example", "summary": "primary failover pending review"},
}

DOC_A = (
    "Runbook: database failover. Confirm the primary is unhealthy with the health endpoint, then promote the "
    "replica with the lowest lag. Update the DNS record and announce the change in the incident channel. "
    "Never promote a replica whose lag exceeds thirty seconds, because writes would be lost. " * 3
)
DOC_B = (
    "Postmortem from last year: the failover took forty minutes because the promotion script read a stale "
    "config from /etc/acme/failover.yaml and the team could not reach the database owner. The fix was to keep "
    "the config in the repository and page the owner automatically. " * 3
)

QUESTION = "Which replica should we promote for INC-4821, and who do we tell?"
FORCED = "INC-4821"
PROTECTED = [
    "https://runbooks.acme.example/db",
    "oncall@acme.example",
    "/etc/acme/failover.yaml",
    FORCED,
]


def history(turns: int = 30) -> list[dict]:
    out = []
    for t in range(turns):
        topic, detail = TOPICS[t % len(TOPICS)]
        if t % 2 == 0:
            out.append({"role": "user", "content": f"Question {t} about {topic}: {detail}. Can you look into it and "
                        f"tell me what we should do about the {topic} issue before the weekly review?"})
        else:
            out.append({"role": "assistant", "content": f"About {topic}: I checked and {detail}. I suggest we "
                        f"track it in the {topic} ticket, review the numbers on Monday and keep an eye on it."})
    return out


def messages() -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}, *history(30)]
    msgs += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_7", "type": "function", "function": {"name": "cluster_status", "arguments": "{\"c\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": json.dumps(TOOL_RESULT, indent=2)},
        {"role": "user", "content": [{"type": "text", "text": "Here is our retry helper:\n" + PY_FILE}]},
        {"role": "assistant", "content": "Thanks, the helper retries on ConnectionError with jittered backoff."},
        {"role": "user", "content": [
            {"type": "text", "text": DOC_A},
            {"type": "image_url", "image_url": {"url": "https://img.acme.example/graph.png"}},
            {"type": "text", "text": DOC_B},
        ]},
        {"role": "assistant", "content": "I read both documents."},
        {"role": "user", "content": QUESTION},
    ]
    return msgs


def documents() -> list[str]:
    transcript = "\n".join(
        f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in history(30)
    )
    return [SYSTEM, transcript, json.dumps(TOOL_RESULT, indent=2), PY_FILE, DOC_A, DOC_B]
