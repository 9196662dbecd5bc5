"""`replay` against a real listener: a message whose MSH-15 asks for no accept ACK (NE) is sent and
counted, and the replay goes on with the next message instead of stopping on a timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.cli import main
from tests.e2e.test_mllp_kill import server

MSG = ("MSH|^~\\&|EPIC|CLINIC|ONCALL|ONCALL|20250101120000||ADT^A04^ADT_A01|{id}|P|2.5|||{mode}|NE\r"
       "EVN|A04|20250101120000\rPID|1||MRN{id}^^^HOSP^MR||Doe^Jo||19800101|F\r")


def test_no_ack_asked_is_not_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three messages, the middle one with MSH-15 = NE: all three are sent, the first and last get
    CA, the middle one is reported as asking for no ACK, and the exit status is 0."""
    path = tmp_path / "in.hl7"
    path.write_text("\n".join(MSG.format(id=i, mode=m) for i, m in ((1, "AL"), (2, "NE"), (3, "AL"))))
    with server(tmp_path / "store.db") as (_proc, port):
        status = main(["replay", "--mllp", f"127.0.0.1:{port}", "--timeout", "10", str(path)])
    out = capsys.readouterr().out
    assert "sent 3 of 3 message(s)" in out, out
    assert "CA 2" in out and "none 1" in out, out
    assert status == 0
