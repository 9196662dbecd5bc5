"""The contacts scrape: OnCall has no contact webhooks, so new and changed roster contacts are found
by paging through ``GET /contacts/`` on a schedule (``[scrape] contacts_interval_seconds``, 0 = off)
or on demand (``oncall-adapter scrape contacts``).

Each contact is hashed (its canonical JSON); the hash last seen is kept in the crosswalk namespace
``contact_hash`` (contact URL -> contact id, detail ``{"hash", "n"}``). A contact whose hash
differs (or that is new) is queued as an envelope (source CONTACTS_SCRAPE, kind
``contact_scraped``, ordering key ``oncall_contact:<id>``) holding the contact as scraped, so the
EMR update is durable and retried like everything else; then the hash is recorded.

The dedup key is ``contact_scrape:<id>:<n>:<hash>`` where ``n`` counts the changes seen: a crash
between queueing and recording makes the next scrape queue the same key (a harmless duplicate),
while a contact that changes back to an earlier state (A -> B -> A) still gets a new key.
Contacts the forward path itself wrote are queued too; the reverse executor recognises them as
echoes (adapter/reverse/loop.py) and sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from adapter import metrics
from adapter.envelope import NewEnvelope, Source, content_hash
from adapter.reverse.bundle import canonical_json
from adapter.store.base import Store

__all__ = ["CONTACT_HASH", "CONTACT_KIND", "ScrapeReport", "run_contact_scrape", "scrape_contacts_once"]

log = structlog.get_logger(__name__)

CONTACT_HASH = "contact_hash"
CONTACT_KIND = "contact_scraped"


@dataclass(frozen=True, slots=True)
class ScrapeReport:
    seen: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    elapsed_ms: float = 0.0

    @property
    def queued(self) -> int:
        return self.new + self.changed


async def scrape_contacts_once(store: Store, client: Any, *, on_stored: Any = None) -> ScrapeReport:
    """Page through every contact once; queue the new and changed ones. Raises the client's errors."""
    started = anyio.current_time()
    seen = new = changed = unchanged = 0
    async for contact in client.iter_contacts():
        seen += 1
        doc = contact.model_dump(mode="json")
        payload = canonical_json(doc)
        digest = content_hash(payload)
        known = await store.xref_get(CONTACT_HASH, contact.url)
        if known is not None and known.detail.get("hash") == digest:
            unchanged += 1
            continue
        n = int(known.detail.get("n", 0)) + 1 if known is not None else 1
        appended = await store.append(NewEnvelope(
            source=Source.CONTACTS_SCRAPE, kind=CONTACT_KIND, ordering_key=f"oncall_contact:{contact.id}",
            dedup_key=f"contact_scrape:{contact.id}:{n}:{digest[:32]}", payload=payload,
            meta={"contact_id": str(contact.id)}))
        await store.xref_put(CONTACT_HASH, contact.url, str(contact.id), {"hash": digest, "n": n})
        metrics.count_appended(appended)
        if known is None:
            new += 1
        else:
            changed += 1
        log.info("envelope_stored", envelope_id=appended.envelope.id, source=Source.CONTACTS_SCRAPE.value,
                 kind=CONTACT_KIND, contact_id=contact.id, outcome=appended.outcome.value)
    report = ScrapeReport(seen, new, changed, unchanged, round((anyio.current_time() - started) * 1000, 1))
    if report.queued and on_stored is not None:
        on_stored()
    log.info("contacts_scraped", count=seen, new=new, changed=changed, unchanged=unchanged,
             elapsed_ms=report.elapsed_ms)
    return report


async def run_contact_scrape(store: Store, client: Any, *, interval_seconds: float, on_stored: Any = None,
                             task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Scrape every `interval_seconds` until cancelled (returns at once when 0: the scrape is off).

    A failed scrape (OnCall down, store busy) is logged and tried again at the next tick: a
    background task never takes the process down.
    """
    task_status.started()
    if interval_seconds <= 0:
        log.info("contacts_scrape_off")
        return
    while True:
        try:
            await scrape_contacts_once(store, client, on_stored=on_stored)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            log.warning("contacts_scrape_failed", error_type=type(exc).__name__,
                        status=getattr(exc, "status", None), retry_in=interval_seconds)
        await anyio.sleep(interval_seconds)   # the schedule itself, not synchronisation
