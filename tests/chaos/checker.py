"""A Jepsen "total queue" style checker over the client history, the store and the execution log.

What goes in must come out, exactly once: every accepted id ends with exactly one terminal
outcome (lost otherwise), nothing appears that no client sent (unexpected), the queues are
empty after the drain, and executions beyond the first are counted (duplicates) along with
runs of one task that overlapped in time.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from tests.chaos.app import EXEC_LOG
from tests.chaos.load import History

from spillway.broker import GROUP
from spillway.broker.keys import Keys

__all__ = ["TERMINAL", "Exec", "Store", "Verdict", "check", "snapshot"]

TERMINAL = ("succeeded", "dead", "cancelled", "expired")


@dataclass(frozen=True, slots=True)
class Exec:
    """One run of a handler: its start, and its end if it got there."""

    task_id: str
    attempt: int
    pid: int
    start: float
    end: float | None


@dataclass
class Store:
    """What Redis holds for one prefix after the drain."""

    records: dict[str, dict[str, str]]  # task id -> record hash
    dead: list[dict[str, str]]  # dead-letter entries
    execs: list[Exec]
    backlog: int
    pending: int
    entries_added: int
    stream_length: int
    evicted_keys: int

    def execs_by_id(self) -> dict[str, list[Exec]]:
        out: dict[str, list[Exec]] = {}
        for e in self.execs:
            out.setdefault(e.task_id, []).append(e)
        return out


async def snapshot(
    client: aioredis.Redis,
    prefix: str,
    queues: list[str],
    *,
    shards: int = 1,
    nodes: list[aioredis.Redis] | None = None,
) -> Store:
    """Read every task record, dead letter, queue size and the execution log under `prefix`.

    `nodes` are plain clients of each primary, for SCAN on a cluster (default: `client`).
    """
    keys = Keys(prefix, shards)
    records: dict[str, dict[str, str]] = {}
    for node in nodes or [client]:
        names = [str(k) async for k in node.scan_iter(match=f"{{{prefix}:*:task:*", count=1000)]
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            async with node.pipeline(transaction=False) as pipe:
                for name in chunk:
                    pipe.hgetall(name)
                for name, h in zip(chunk, await pipe.execute(), strict=True):
                    if h:
                        records[name.rsplit(":", 1)[1]] = {str(k): str(v) for k, v in h.items()}
    dead: list[dict[str, str]] = []
    backlog = pending = added = length = 0
    for shard in keys.all_shards():
        for q in queues:
            letters = await client.xrange(shard.dead(q)) or []
            for _, fields in letters:
                dead.append({str(k): str(v) for k, v in (fields or {}).items()})
            n = int(await client.xlen(shard.stream(q)))
            length += n
            backlog += n + int(await client.zcard(shard.due(q)))
            with contextlib.suppress(aioredis.ResponseError):
                pending += int((await client.xpending(shard.stream(q), GROUP))["pending"])
                info = await client.xinfo_stream(shard.stream(q))
                added += int(info.get("entries-added", 0))
    starts: dict[tuple[str, int, int], float] = {}
    ends: dict[tuple[str, int, int], float] = {}
    for raw in await client.lrange(f"{prefix}:{EXEC_LOG}", 0, -1):
        kind, task_id, attempt, pid, t = str(raw).split("|")
        slot = starts if kind == "S" else ends
        slot[(task_id, int(attempt), int(pid))] = float(t)
    execs = [Exec(k[0], k[1], k[2], s, ends.get(k)) for k, s in starts.items()]
    evicted = 0
    for node in nodes or [client]:
        evicted += int((await node.info("stats")).get("evicted_keys", 0))
    return Store(records, dead, execs, backlog, pending, added, length, evicted)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Verdict:
    """The result of one scenario: the table row and every check behind it."""

    scenario: str
    size: str
    faults: str = "none"
    tasks: int = 0
    lost: int = 0
    duplicates: int = 0
    worst_latency: float = 0.0
    checks: list[Check] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: object = "") -> None:
        self.checks.append(Check(name, bool(ok), str(detail)))

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "size": self.size,
            "tasks": self.tasks,
            "faults": self.faults,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "worst_latency_ms": round(self.worst_latency * 1000),
            "result": "pass" if self.passed else "FAIL",
            "failed": [f"{c.name}: {c.detail}" for c in self.failures()],
            "notes": self.notes,
        }

    def assert_passed(self) -> None:
        failed = "\n".join(f"  {c.name}: {c.detail}" for c in self.failures())
        assert self.passed, f"{self.scenario} [{self.size}] failed:\n{failed}\n{self.notes}"


def check(
    verdict: Verdict,
    history: History,
    store: Store,
    *,
    expected_runs: dict[str, int] | None = None,
    run_once_types: tuple[str, ...] = ("work", "slow"),
    refusals_are_certain: bool = True,
    fault_at: float | None = None,
) -> Verdict:
    """The global invariants of every scenario, recorded on `verdict`.

    `expected_runs` maps a task type to the executions each of its tasks must have at most
    (default 1: anything beyond the first run is a duplicate). With `refusals_are_certain`
    false, a 503 counts as indeterminate (it may follow a timeout after the write was sent).
    With `fault_at` (when the fault began), a 503 whose outcome was unknown and whose task was
    written must have been sent before it: Redis ran it just before it was stopped or killed.
    Anything sent later must have been refused for certain (the accept script's deadline).
    """
    runs_allowed = {t: 1 for t in run_once_types} | (expected_runs or {})
    accepted = history.accepted()
    accepted_ids = {i for ids in accepted.values() for i in ids}
    by_key: dict[str, set[str]] = {}
    for task_id, rec in store.records.items():
        key = _payload_key(rec)
        by_key.setdefault(key, set()).add(task_id)

    # Lost: accepted, yet missing or not terminal after the drain.
    missing = sorted(i for i in accepted_ids if i not in store.records)
    stuck = sorted(
        i for i in accepted_ids if i in store.records and store.records[i]["status"] not in TERMINAL
    )
    verdict.lost = len(missing) + len(stuck)
    verdict.tasks = len(accepted_ids)
    verdict.check("lost accepted tasks = 0", not missing, f"{len(missing)} missing {missing[:3]}")
    verdict.check(
        "every accepted task terminal", not stuck, f"{len(stuck)} not terminal {stuck[:3]}"
    )

    # Exactly one terminal outcome: dead tasks have one dead letter, the others none.
    dead_letters = Counter(d.get("id", "") for d in store.dead)
    wrong = [
        i
        for i in accepted_ids
        if i in store.records
        and dead_letters[i] != (1 if store.records[i]["status"] == "dead" else 0)
    ]
    verdict.check("exactly one terminal outcome per accepted id", not wrong, wrong[:3])

    # Unexpected: stored tasks no client sent; runs of tasks that do not exist.
    unexpected = sorted(k for k in by_key if k not in history.keys)
    ghost_runs = sorted({e.task_id for e in store.execs if e.task_id not in store.records})
    verdict.check("unexpected = 0", not unexpected and not ghost_runs, (unexpected, ghost_runs))

    # One task per submission key (a retried submission must not create a second task).
    doubled = {k: ids for k, ids in by_key.items() if len(ids) > 1}
    verdict.check("one task per submission key", not doubled, list(doubled.items())[:3])
    # What a 202 named is what the store holds for that key.
    mismatched = [k for k, ids in accepted.items() if not ids <= by_key.get(k, set())]
    verdict.check("202 ids match the stored tasks", not mismatched, mismatched[:3])

    # A refusal (an answer other than 202) must mean nothing was stored, except the 503 that
    # says the outcome is unknown (Redis's connection broke after the write was sent).
    answered = {op.key for op in history.ops if op.status is not None}
    refused_only = answered - set(accepted)
    unsure = (None,) if refusals_are_certain else (None, 503)
    indeterminate = {
        op.key
        for op in history.ops
        if op.status in unsure or op.problem.endswith(":outcome-unknown")
    } - set(accepted)
    refused_stored = sorted(k for k in refused_only - indeterminate if k in by_key)
    verdict.notes["indeterminate"] = len(indeterminate)
    verdict.notes["recovered"] = len([k for k in indeterminate if k in by_key])
    if fault_at is not None:
        unknown = [op for op in history.ops if op.problem.endswith(":outcome-unknown")]
        written_late = sorted(
            op.key
            for op in unknown
            if op.key in by_key and op.key not in accepted and op.start > fault_at
        )
        verdict.notes["outcome_unknown"] = len(unknown)
        verdict.check(
            "outcome-unknown 503s written only if sent before the fault",
            not written_late,
            written_late[:5],
        )
    verdict.check("refused requests stored nothing", not refused_stored, refused_stored[:5])

    # No 5xx but 503; every 429/503 says when to come back.
    statuses = history.statuses()
    bad = {s: n for s, n in statuses.items() if s is not None and s >= 500 and s != 503}
    verdict.check("no 5xx other than 503", not bad, bad)
    no_retry_after = [
        op.key for op in history.ops if op.status in (429, 503) and not op.retry_after
    ]
    verdict.check("429/503 carry Retry-After", not no_retry_after, no_retry_after[:3])
    verdict.notes["statuses"] = {str(k): v for k, v in sorted(statuses.items(), key=str)}

    verdict.check("backlog = 0 after drain", store.backlog == 0, store.backlog)
    verdict.check("pending = 0 after drain", store.pending == 0, store.pending)

    # Executions beyond those allowed, and overlapping runs of one task.
    duplicates = overlaps = 0
    for task_id, execs in store.execs_by_id().items():
        known = store.records.get(task_id)
        allowed = runs_allowed.get(known["type"] if known else "", 1)
        duplicates += max(0, len(execs) - allowed)
        overlaps += _overlaps(execs)
    verdict.duplicates = duplicates
    verdict.notes["overlaps"] = overlaps
    verdict.notes["executions"] = len(store.execs)
    answered_latencies = [op.latency for op in history.ops if op.status is not None]
    verdict.worst_latency = max(answered_latencies, default=0.0)
    return verdict


def _payload_key(record: dict[str, str]) -> str:
    try:
        return str(orjson.loads(record.get("payload", "{}")).get("key", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return ""


def _overlaps(execs: list[Exec]) -> int:
    """Pairs of finished runs of one task whose intervals intersect."""
    done = sorted((e.start, e.end) for e in execs if e.end is not None)
    return sum(1 for i, (_, end) in enumerate(done) for start, _ in done[i + 1 :] if start < end)
