"""`map --compare OLD NEW --stored N`: a mapping change reviewed against real stored messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

from adapter.cli import main
from adapter.envelope import NewEnvelope, Source
from adapter.mapping.loader import SHIPPED_DIR
from adapter.store import open_store

ROOT = Path(__file__).resolve().parents[2]


async def _fill(url: str, files: list[str]) -> None:
    store = open_store(url)
    await store.open()
    try:
        for i, name in enumerate(files):
            payload = (ROOT / "samples" / "hl7v2" / name).read_bytes()
            kind = payload.split(b"|")[8].split(b"^")[:2]
            await store.append(NewEnvelope(Source.MLLP, b"^".join(kind).decode(), f"k{i}", f"d{i}", payload))
    finally:
        await store.close()


def test_compare_stored_envelopes_shows_field_level_differences(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The last N stored envelopes run through both folders; a changed table value shows as a
    field-level difference naming the operation field, and the unaffected message shows no change."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    anyio.run(_fill, url, ["siu_s12_v25_virtual.hl7", "adt_a40_merge_v25.hl7"])
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    site = (SHIPPED_DIR / "site.yaml").read_text()
    assert "/divisions/1/" in site
    (new / "site.yaml").write_text(site.replace("/divisions/1/", "/divisions/2/"))
    shutil.copy(SHIPPED_DIR / "site.yaml", old / "site.yaml")
    assert main(["map", "--compare", str(old), str(new), "--stored", "2", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "operations[0].division: 'http://127.0.0.1:8900/divisions/1/' -> " \
           "'http://127.0.0.1:8900/divisions/2/'" in out
    assert "no change" in out
    assert "1 of 2 message(s) map differently" in out
