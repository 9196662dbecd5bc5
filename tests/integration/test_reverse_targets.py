"""EMR targets beyond the happy FHIR path: the outbox folder, the target factory, FHIR failures
classified for retry or dead letter, and the reverse executor driving the MLLP target against the
adapter's own MLLP listener (SIU^S12 then S14 for an appointment, ADT^A04 for a contact)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

import adapter.reverse.operations  # noqa: F401 - registers the reverse operation kinds
from adapter.envelope import NewEnvelope, Source
from adapter.errors import ConfigError, PermanentError, TransientError
from adapter.fhir.emr_client import EMRFHIRClient
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set
from adapter.oncall.client import OnCallClient
from adapter.reverse.bundle import BundleBuilder, bundle_hash, canonical_json
from adapter.reverse.executor import ReverseExecutor
from adapter.reverse.fhir import FHIRTarget
from adapter.reverse.mllp_out import MLLPTarget
from adapter.reverse.operations import EMRPatient
from adapter.reverse.outbox import OutboxTarget
from adapter.reverse.targets import Delivery, NoTarget, build_emr_target
from adapter.store.base import Store
from listeners.mllp.inbox import MessageHandler
from listeners.mllp.server import serve_mllp
from listeners.scrape import scrape_contacts_once
from tests.fhir_server.fhir_harness import NodeFHIRServer
from tests.integration.oncall_fixtures import TOKEN, SandboxHandle, make_oncall_sandbox  # noqa: F401

pytestmark = pytest.mark.anyio
BASE = "https://api.oncallhealth.ca"
AT = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def emr_server() -> Iterator[NodeFHIRServer]:
    with NodeFHIRServer(bearer="right-token") as server:
        yield server


def _delivery(family: str) -> Delivery:
    patient = EMRPatient(oncall_url=f"{BASE}/contacts/5/", first_name="Ana", last_name=family)
    bundle = BundleBuilder(BASE).for_patients([patient])
    return Delivery(key="oncall_contact:5", bundle=bundle, output_hash=bundle_hash(bundle), at=AT,
                    patients=(patient,))


async def test_outbox_writes_one_file_per_bundle_atomically(tmp_path: Path) -> None:
    """A delivery is one JSON file holding the Bundle; delivering it again rewrites the same file;
    a changed Bundle is a second file; no temporary file is left behind."""
    target = OutboxTarget(tmp_path / "outbox")
    first = await target.deliver(_delivery("Lima"))
    again = await target.deliver(_delivery("Lima"))
    other = await target.deliver(_delivery("Lima-Souza"))
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert first.receipt == again.receipt and files == sorted([first.receipt, other.receipt])
    assert files[0].startswith("20260301T120000123456Z-contact-5-")
    written = (tmp_path / "outbox" / first.receipt).read_bytes()
    assert written == canonical_json(_delivery("Lima").bundle)
    assert json.loads(written)["type"] == "transaction"


def test_outbox_folder_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    """An outbox path under a file is refused at start-up, naming the setting."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"emr\.outbox_dir"):
        OutboxTarget(tmp_path / "file" / "outbox")


async def test_target_factory(tmp_path: Path) -> None:
    """`[emr] target` picks the target; fhir needs its base URL; unknown names are refused."""
    assert isinstance(build_emr_target(target="none", oncall_base_url=BASE), NoTarget)
    outbox = build_emr_target(target="outbox", oncall_base_url=BASE, outbox_dir=tmp_path)
    mllp = build_emr_target(target="mllp", oncall_base_url=BASE, mllp_port=1)
    fhir = build_emr_target(target="fhir", oncall_base_url=BASE, fhir_base_url="http://127.0.0.1:1/fhir")
    assert [t.name for t in (outbox, mllp, fhir)] == ["outbox", "mllp", "fhir"]
    for target in (outbox, mllp, fhir):
        await target.aclose()
    with pytest.raises(ConfigError, match=r"emr\.fhir_base_url"):
        build_emr_target(target="fhir", oncall_base_url=BASE)
    with pytest.raises(ConfigError, match=r"emr\.target"):
        build_emr_target(target="ftp", oncall_base_url=BASE)


async def test_fhir_failures_are_classified(emr_server: NodeFHIRServer) -> None:
    """Wrong credentials: PermanentError (401, dead letter); nobody listening: TransientError."""
    wrong = FHIRTarget(EMRFHIRClient(emr_server.base_url, bearer_token="wrong"))
    with pytest.raises(PermanentError, match="401"):
        await wrong.deliver(_delivery("Lima"))
    await wrong.aclose()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    down = FHIRTarget(EMRFHIRClient(f"http://127.0.0.1:{port}/fhir", bearer_token="right-token"))
    with pytest.raises(TransientError):
        await down.deliver(_delivery("Lima"))
    await down.aclose()


async def test_executor_over_mllp_sends_s12_then_s14_then_adt(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:  # noqa: F811
    """An appointment goes to the EMR as SIU^S12, its change as SIU^S14, a scraped contact as ADT^A04;
    the receiver (the adapter's own MLLP listener, over its own store) acknowledged each."""
    sandbox = make_oncall_sandbox()
    created = sandbox.seed(appointments=[{
        "title": "Consult", "type": "phone", "datetime": "2026-03-02T14:00:00Z", "duration": 15,
        "division": f"{sandbox.base_url}/divisions/1/",
        "participants": [{"first_name": "Ana", "last_name": "Lima", "email": "ana@example.org"}]}],
        contacts=[{"first_name": "Bo", "last_name": "Chen"}])
    url = created["appointments"][0]["url"]
    appointment_id = int(url.rstrip("/").rsplit("/", 1)[1])
    mappings = load_mapping_set([SHIPPED_DIR])
    async with anyio.create_task_group() as tg:
        port = await tg.start(lambda *, task_status: serve_mllp(MessageHandler(store), port=0,
                                                                shutdown_grace=0.5, task_status=task_status))
        target = build_emr_target(target="mllp", oncall_base_url=sandbox.base_url, mllp_port=port)
        assert isinstance(target, MLLPTarget)
        async with OnCallClient(api_key=TOKEN, base_url=sandbox.base_url, seed=1) as client:
            executor = ReverseExecutor(store, client, target, mappings=lambda: mappings,
                                       oncall_base_url=sandbox.base_url)

            async def webhook(event: str) -> str:
                appended = await store.append(NewEnvelope(
                    Source.ONCALL_WEBHOOK, event, f"oncall_appointment:{appointment_id}", f"t:{event}",
                    json.dumps({"event": event, "url": url}).encode()))
                return (await executor.process(appended.envelope)).action

            assert await webhook("appointment_created") == "delivered"
            await anyio.to_thread.run_sync(lambda: sandbox.change(appointment_id, duration=30))
            assert await webhook("appointment_updated") == "delivered"
            await scrape_contacts_once(store, client)
            [contact] = await store.list(source=Source.CONTACTS_SCRAPE.value)
            assert (await executor.process(contact)).action == "delivered"
        await target.aclose()
        tg.cancel_scope.cancel()
    received = [e.kind for e in await store.list(source=Source.MLLP.value, newest_first=False)]
    assert received == ["SIU^S12", "SIU^S14", "ADT^A04"]


async def test_reverse_executor_built_from_configuration(store: Store, tmp_path: Path) -> None:
    """`[emr]` picks the target; a FHIR target reuses the EMR FHIR base and credentials of `[fhir]`."""
    from adapter.config import load_config
    from adapter.reverse.wiring import build_reverse_executor

    env = {"ONCALL_ADAPTER_EMR__TARGET": "outbox", "ONCALL_ADAPTER_EMR__OUTBOX_DIR": str(tmp_path / "out")}
    executor = build_reverse_executor(load_config(environ=env), store, None, oncall_base_url=BASE,
                                      mappings=lambda: None)
    assert executor.target.name == "outbox" and (tmp_path / "out").is_dir()
    await executor.aclose()
    env = {"ONCALL_ADAPTER_EMR__TARGET": "fhir", "ONCALL_ADAPTER_FHIR__EMR_BASE_URL": "http://127.0.0.1:1/fhir",
           "ONCALL_ADAPTER_FHIR__EMR_TOKEN": "t"}
    executor = build_reverse_executor(load_config(environ=env), store, None, oncall_base_url=BASE,
                                      mappings=lambda: None)
    assert isinstance(executor.target, FHIRTarget)
    assert executor.target.client.base_url == "http://127.0.0.1:1/fhir/"
    await executor.aclose()
