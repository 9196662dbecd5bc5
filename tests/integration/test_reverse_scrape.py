"""The contacts scrape against the real sandbox and store: new and changed contacts are queued once,
a contact changed back to an earlier state is queued again, the scheduled task survives a failing
OnCall, and `oncall-adapter scrape contacts` runs as a real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from adapter.envelope import Source
from adapter.oncall.client import OnCallClient
from adapter.store.base import Store
from listeners.scrape import run_contact_scrape, scrape_contacts_once
from tests.integration.oncall_fixtures import TOKEN, SandboxHandle, make_oncall_sandbox  # noqa: F401

pytestmark = pytest.mark.anyio
COMMAND = str(Path(sys.executable).parent / "oncall-adapter")   # the installed console script


def _contacts(sandbox: SandboxHandle, *names: str) -> list[int]:
    people = [{"first_name": n, "last_name": "Test", "email": f"{n.lower()}@example.org"} for n in names]
    created = sandbox.seed(contacts=people)
    return [int(c["id"]) for c in created["contacts"]]


async def _patch_contact(sandbox: SandboxHandle, contact_id: int, **fields: str) -> None:
    def call() -> None:
        with sandbox.api() as api:
            api.patch(f"/contacts/{contact_id}/", json=fields).raise_for_status()
    await anyio.to_thread.run_sync(call)


async def test_new_and_changed_contacts_are_queued_once(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:  # noqa: F811
    """Three contacts over two pages are queued; a rescrape queues nothing; a change queues that one
    contact; changing it back queues it again (a new key, not a duplicate of the first)."""
    sandbox = make_oncall_sandbox(page_size=2)
    [first, *_] = _contacts(sandbox, "Ana", "Bo", "Cy")
    async with OnCallClient(api_key=TOKEN, base_url=sandbox.base_url, seed=1) as client:
        report = await scrape_contacts_once(store, client)
        assert (report.seen, report.new, report.changed, report.unchanged) == (3, 3, 0, 0)
        assert (await scrape_contacts_once(store, client)).queued == 0
        await _patch_contact(sandbox, first, last_name="Changed")
        assert (await scrape_contacts_once(store, client)).changed == 1
        await _patch_contact(sandbox, first, last_name="Test")
        assert (await scrape_contacts_once(store, client)).changed == 1
    queued = await store.list(source=Source.CONTACTS_SCRAPE.value, newest_first=False)
    assert len(queued) == 5
    assert [e.ordering_key for e in queued].count(f"oncall_contact:{first}") == 3
    assert {e.kind for e in queued} == {"contact_scraped"}


async def test_scheduled_scrape_survives_a_failing_oncall(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:  # noqa: F811
    """While OnCall answers 503 the task logs and waits for the next tick; once OnCall is back the
    contacts are queued. Interval 0 means off: the task returns at once."""
    sandbox = make_oncall_sandbox()
    _contacts(sandbox, "Di")
    sandbox.faults({"path": "/contacts/*", "rate_503": 1.0})
    async with OnCallClient(api_key=TOKEN, base_url=sandbox.base_url, seed=1, get_retries=0) as client:
        await run_contact_scrape(store, client, interval_seconds=0)   # off: returns
        woken: list[int] = []
        async with anyio.create_task_group() as tg:
            await tg.start(lambda *, task_status: run_contact_scrape(
                store, client, interval_seconds=0.05, on_stored=lambda: woken.append(1),
                task_status=task_status))
            with capture_logs() as logs, anyio.fail_after(5):
                while not any(e["event"] == "contacts_scrape_failed" for e in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.02)   # poll the log for the failed tick, under a deadline
            assert not await store.list(source=Source.CONTACTS_SCRAPE.value)
            await anyio.to_thread.run_sync(sandbox.clear_faults)
            with anyio.fail_after(10):
                while not woken:  # noqa: ASYNC110 - set by the scrape's own callback, once it stored them
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert len(await store.list(source=Source.CONTACTS_SCRAPE.value)) == 1


def test_scrape_contacts_command(tmp_path: Path, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:  # noqa: F811
    """`oncall-adapter scrape contacts --json` (a real process) prints counts and queues the contacts;
    run again, it queues nothing."""
    sandbox = make_oncall_sandbox()
    _contacts(sandbox, "Ed", "Flo")
    env = {**os.environ, "ONCALL_ADAPTER_ONCALL__API_KEY": TOKEN,
           "ONCALL_ADAPTER_ONCALL__BASE_URL": sandbox.base_url,
           "ONCALL_ADAPTER_STORE__URL": f"sqlite:///{tmp_path / 'adapter.db'}"}

    def run() -> dict[str, int]:
        done = subprocess.run([COMMAND, "scrape", "contacts", "--json"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        counts: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
        return counts

    first = run()
    assert (first["seen"], first["new"], first["queued"]) == (2, 2, 2)
    assert run()["queued"] == 0
