"""`oncall-adapter queue` on a real SQLite store file: summary with dead letters and the patients waiting
behind them, show (PHI only with --show-phi), retry, drop and prune."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
import structlog

from adapter.cli import main
from adapter.envelope import NewEnvelope, Source, State
from adapter.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
A01 = (ROOT / "samples" / "hl7v2" / "adt_a01_epic_v25.hl7").read_bytes()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The commands configure logging on the (captured) stderr: undo it so no test logs to a closed file."""
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.reset_defaults()
    for handler in logging.getLogger().handlers:
        if handler not in handlers:
            logging.getLogger().removeHandler(handler)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store holding: #1 dead letter of patient A, #2 queued behind it, #3 done (patient B)."""
    path = tmp_path / "adapter.db"
    monkeypatch.setenv("ONCALL_ADAPTER_STORE__URL", f"sqlite:///{path}")

    async def seed() -> None:
        store = SQLiteStore(path)
        await store.open()
        try:
            for n, key in enumerate(("patient:MRN100001", "patient:MRN100001", "patient:B")):
                payload = A01 + str(n).encode()
                await store.append(NewEnvelope(Source.MLLP, "ADT^A01", key, f"test:{n}", payload))
            claimed = {e.id for e in await store.claim("test", limit=10, lease=timedelta(seconds=60))}
            assert claimed == {1, 3}
            await store.dead_letter(1, "test", "operation 1 (contact_upsert) failed: PermanentError: OnCall "
                                               "POST /contacts/ answered 400: division: Invalid hyperlink")
            await store.complete(3, "test", mapping_version="v1")
        finally:
            await store.close()

    anyio.run(seed)
    return path


def _state(path: Path, envelope_id: int) -> State:
    async def get() -> State:
        store = SQLiteStore(path)
        await store.open()
        try:
            envelope = await store.get(envelope_id)
            assert envelope is not None
            return envelope.state
        finally:
            await store.close()

    return anyio.run(get)


def test_summary_names_dead_letters_and_who_waits(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The summary gives depths, the dead letter with its reason, and how many later envelopes of that
    patient wait behind it; --json gives the same as JSON."""
    assert main(["queue"]) == 0
    out = capsys.readouterr().out
    assert "dead letters: 1   patients waiting behind one: 1" in out
    assert "#1 ADT^A01 (mllp, 0 attempts" in out
    assert "1 later envelope(s) of this patient wait behind it" in out
    assert "answered 400: division: Invalid hyperlink" in out
    assert "MRN100001" not in out and "TREMBLAY" not in out
    assert main(["queue", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by_state"]["dead"] == 1 and data["dead_letters"][0]["waiting_behind"] == 1


def test_show_hides_phi_unless_asked(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`queue show` gives state, reason and history without patient data; --show-phi adds the payload and
    the operations it maps to."""
    assert main(["queue", "show", "2"]) == 0
    out = capsys.readouterr().out
    assert "waits behind dead letter #1 of the same patient" in out
    assert "stored" in out and "TREMBLAY" not in out and "MRN100001" not in out
    assert "add --show-phi" in out
    assert main(["queue", "show", "1", "--show-phi"]) == 0
    out = capsys.readouterr().out
    assert "TREMBLAY^MARIE" in out and "dead_lettered" in out
    assert '"kind": "contact_upsert"' in out and '"emr_patient_id": "MRN100001"' in out


def test_retry_drop_prune(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """retry requeues a dead letter, drop gives an envelope up with a reason, prune purges finished payloads;
    an id that cannot be retried is an error (exit 1)."""
    assert main(["queue", "retry", "3"]) == 1
    assert main(["queue", "retry", "--all"]) == 0
    assert _state(db, 1) == State.QUEUED
    assert main(["queue", "drop", "2", "--reason", "sent twice by the EMR"]) == 0
    assert _state(db, 2) == State.DROPPED
    assert main(["queue", "prune", "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert "requeued 1 envelope(s)" in out and "dropped envelope 2" in out
    assert "purged the payloads of 2 envelope(s)" in out
