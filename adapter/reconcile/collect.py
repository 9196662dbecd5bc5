"""Gather what reconciliation compares: the crosswalk, OnCall's contacts and appointments, the EMR.

OnCall's contact list is read page by page with bounded concurrency: page 1 gives the count and the
page size, pages 2..N are fetched by number (`?page=N`, the DRF convention the API follows) by at
most `concurrency` requests at a time, and a list that grew meanwhile is followed to its end.
Appointments are not listed (OnCall's filters are unknown and the list holds every appointment ever
made): the ones the crosswalk knows in the window, or the EMR names, are read one by one, with the
same bound. A crosswalk target OnCall answers 404 for is recorded as gone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import anyio
import structlog
from pydantic import ValidationError

from adapter.errors import PermanentError
from adapter.oncall.models import Appointment, Contact
from adapter.reconcile.emr_data import EMRData
from adapter.reconcile.fields import as_instant
from adapter.reconcile.model import Snapshot, Window
from adapter.reconcile.progress import Progress
from adapter.store.base import Store
from adapter.worker import xref

__all__ = ["EMRSource", "collect", "fetch_contacts"]

logger = structlog.get_logger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class EMRSource(Protocol):
    description: str

    async def load(self, window: Window) -> EMRData: ...


async def collect(store: Store, client: Any, *, window: Window, emr: EMRSource | None = None,
                  emr_id_label: str = "EMR id", concurrency: int = 4,
                  progress: Progress | None = None) -> Snapshot:
    """One consistent-enough picture of the three sides (read-only: nothing is changed)."""
    started = time.perf_counter()
    progress = progress or Progress(enabled=False)
    patient_xrefs = await store.xref_list(xref.PATIENT)
    appointment_xrefs = await store.xref_list(xref.APPOINTMENT)
    emr_data = await emr.load(window) if emr is not None else None
    contacts = await fetch_contacts(client, concurrency=concurrency, progress=progress)

    gone: set[str] = set()
    listed = {c.url for c in contacts}
    unlisted = sorted({x.target for x in patient_xrefs} - listed)
    for url, found in await _bounded(unlisted, lambda u: _get_or_none(client.get_contact, u),
                                     concurrency, progress, "crosswalk contacts"):
        if found is None:
            gone.add(url)
        else:
            contacts.append(found)   # exists but not in the list (visibility of the key)

    named = {a.id for a in emr_data.appointments} if emr_data is not None else set()
    in_scope = [x for x in appointment_xrefs
                if x.source_id in named or window.holds(as_instant(x.detail.get("start")))]
    appointments: dict[str, Appointment] = {}
    targets = sorted({x.target for x in in_scope})
    for url, appointment in await _bounded(targets, lambda u: _get_or_none(client.get_appointment, u),
                                           concurrency, progress, "appointments"):
        if appointment is None:
            gone.add(url)
        else:
            appointments[url] = appointment
    progress.close()
    logger.info("reconcile_collected", contacts=len(contacts), patient_xrefs=len(patient_xrefs),
                appointment_xrefs=len(in_scope), gone=len(gone),
                emr_patients=len(emr_data.patients) if emr_data else None,
                elapsed_ms=round((time.perf_counter() - started) * 1000, 1))
    return Snapshot(
        window=window, emr_id_label=emr_id_label, contacts=contacts, patient_xrefs=patient_xrefs,
        appointment_xrefs=in_scope, appointments=appointments, gone=gone,
        emr_patients=emr_data.patients if emr_data else None,
        emr_appointments=emr_data.appointments if emr_data else None,
        emr_unusable=emr_data.problems if emr_data else [],
        emr_source=emr.description if emr is not None else None)


async def _get_or_none(get: Callable[[str], Awaitable[R]], url: str) -> R | None:
    try:
        return await get(url)
    except PermanentError as exc:
        if exc.status in (404, 410):
            return None
        raise


async def _bounded(items: Iterable[T], call: Callable[[T], Awaitable[R]], limit: int,
                   progress: Progress, label: str) -> list[tuple[T, R]]:
    """`call` on every item, at most `limit` at a time; results in the items' order."""
    items = list(items)
    results: list[Any] = [None] * len(items)
    if not items:
        return []
    semaphore = anyio.Semaphore(max(1, limit))
    progress.start(label, len(items))

    async def one(index: int, item: T) -> None:
        async with semaphore:
            results[index] = (item, await call(item))
        progress.advance(1)

    async with anyio.create_task_group() as tg:
        for index, item in enumerate(items):
            tg.start_soon(one, index, item)
    return results


async def fetch_contacts(client: Any, *, concurrency: int = 4, progress: Progress | None = None,
                         path: str = "/contacts/") -> list[Contact]:
    """Every contact the key can see, pages fetched `concurrency` at a time, each URL once."""
    progress = progress or Progress(enabled=False)
    first = await _page(client, path, 1)
    count = first.get("count")
    results = list(first["results"])
    by_url: dict[str, Contact] = {}
    progress.start("contacts", count if isinstance(count, int) else None)
    progress.advance(len(results))
    size = len(results)
    last = 1
    if first.get("next") and isinstance(count, int) and size:
        last = math.ceil(count / size)
        pages: dict[int, dict[str, Any]] = {}
        semaphore = anyio.Semaphore(max(1, concurrency))

        async def one(number: int) -> None:
            async with semaphore:
                pages[number] = await _page(client, path, number)
            progress.advance(len(pages[number]["results"]))

        async with anyio.create_task_group() as tg:
            for number in range(2, last + 1):
                tg.start_soon(one, number)
        for number in range(2, last + 1):
            results.extend(pages[number]["results"])
        tail = pages.get(last, first)
    else:
        tail = first
    while tail.get("next"):   # the list grew while it was read, or no count: follow it to the end
        last += 1
        try:
            tail = await _page(client, path, last)
        except PermanentError as exc:
            if exc.status == 404:   # "Invalid page.": the list shrank meanwhile
                break
            raise
        results.extend(tail["results"])
        progress.advance(len(tail["results"]))
    for index, item in enumerate(results):
        try:
            contact = Contact.model_validate(item)
        except ValidationError as exc:
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise PermanentError(f"OnCall GET {path}: contact {index} of the list is unexpected ({problem})",
                                 hint="the OnCall API changed or oncall.base_url is not OnCall") from None
        by_url.setdefault(contact.url, contact)
    return list(by_url.values())


async def _page(client: Any, path: str, number: int) -> dict[str, Any]:
    # The client's request choke point (auth, base check, error translation, retries on GET); its
    # public iterators follow `next` one page at a time, which is what this function avoids.
    data = await client._request("GET", path, params={"page": str(number)})
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise PermanentError(f"OnCall GET {path}?page={number}: expected a page {{count, next, previous, "
                             "results}", hint="check oncall.base_url points at the OnCall API")
    return data
