"""Reconciliation: the report that replaces manual reconciliation, and its safe fixes.

    collect.py      gather the crosswalk, OnCall contacts (pages with bounded concurrency) and the
                    appointments in a window; emr_data.py / emr_export.py: the EMR (FHIR search, or a
                    Bundle / NDJSON / CSV export) mapped with the feed's own mapping set
    compare.py      pure: Snapshot -> Findings, each with its fix operations (or none: for a person)
    report.py       table / json / csv / html
    fix.py          findings -> RECONCILE envelopes queued in the store
    ops.py, apply.py  the compare-and-set correction kinds and how the worker applies them

Reports show patient data (that is their job); logs carry ids and counts only.
"""

from __future__ import annotations

from typing import Any

from adapter.reconcile.collect import EMRSource, collect
from adapter.reconcile.compare import compare
from adapter.reconcile.model import Finding, Snapshot, Window
from adapter.reconcile.progress import Progress
from adapter.store.base import Store

__all__ = ["reconcile"]


async def reconcile(store: Store, client: Any, *, window: Window, emr: EMRSource | None = None,
                    emr_id_label: str = "EMR id", concurrency: int = 4, fix_email: bool = False,
                    progress: Progress | None = None) -> tuple[Snapshot, list[Finding]]:
    """Collect and compare (read-only)."""
    snapshot = await collect(store, client, window=window, emr=emr, emr_id_label=emr_id_label,
                             concurrency=concurrency, progress=progress)
    return snapshot, compare(snapshot, fix_email=fix_email)
