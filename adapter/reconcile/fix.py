"""Turning findings into corrections queued through the normal queue.

The fixable findings of one ordering key (the feed's own key for that patient or appointment, so a
correction is applied in order with the feed's messages about the same object) become ONE envelope:
source `reconcile`, kind `reconcile`, payload the JSON list of their operations. The dedup key holds
the run id, so a later run queues again (the operations are compare-and-set: a correction already
applied does nothing). The worker applies them with `adapter.reconcile.apply`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from adapter.envelope import NewEnvelope, Source, utcnow
from adapter.reconcile.model import Finding
from adapter.reconcile.ops import parse_operations
from adapter.store.base import Store

__all__ = ["FixPlan", "plan_fixes", "queue_fixes", "run_id"]

logger = structlog.get_logger(__name__)
KIND = "reconcile"


@dataclass(frozen=True)
class FixPlan:
    run_id: str
    envelopes: list[NewEnvelope]
    findings: list[Finding]           # the fixable ones, in envelope order

    @property
    def operations(self) -> int:
        return sum(len(json.loads(e.payload)) for e in self.envelopes)

    def describe(self) -> str:
        """What --fix would change, one line per finding (for the operator; names may appear)."""
        if not self.findings:
            return "nothing to fix\n"
        lines = [f"--fix would queue {len(self.envelopes)} envelopes ({self.operations} operations):"]
        lines += [f"  {f.subject}: {f.action}" for f in self.findings]
        return "\n".join(lines) + "\n"


def run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def plan_fixes(findings: list[Finding], *, run: str | None = None) -> FixPlan:
    """Group the fixable findings' operations by ordering key (order kept), one envelope per key."""
    run = run or run_id()
    grouped: dict[str, list[dict[str, Any]]] = {}
    fixable: list[Finding] = []
    for finding in findings:
        if not finding.fix:
            continue
        fixable.append(finding)
        ops = grouped.setdefault(finding.ordering_key, [])
        for op in finding.fix:
            if op not in ops:   # two findings may ask for the same correction
                ops.append(op)
    envelopes = []
    for key, ops in grouped.items():
        payload = json.dumps(ops, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
        parse_operations(payload, where=f"reconcile fix for {key}")   # refuse to queue what cannot apply
        envelopes.append(NewEnvelope(Source.RECONCILE, KIND, key, f"reconcile:{run}:{key}", payload,
                                     meta={"run": run, "ops": str(len(ops))}))
    order = {key: index for index, key in enumerate(grouped)}
    fixable.sort(key=lambda f: order[f.ordering_key])
    return FixPlan(run, envelopes, fixable)


async def queue_fixes(store: Store, plan: FixPlan) -> int:
    """Append the plan's envelopes in one transaction; returns how many were stored."""
    if not plan.envelopes:
        return 0
    appended = await store.append_many(plan.envelopes)
    stored = sum(1 for a in appended if a.outcome.value == "stored")
    logger.info("reconcile_fixes_queued", run=plan.run_id, envelopes=stored, operations=plan.operations)
    return stored
