"""`oncall-adapter serve` as the operator runs it: health, readiness, metrics, signals, start-up
refusals, and no patient data in its logs whatever path a message takes."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.delivery_harness import BIN, Adapter, adapter_env, free_port, wait_until

CANARY = {"family": "Quuxleycanary", "given": "Zanzibarcanary", "email": "zq.canary@example.org",
          "phone": "5550199778", "dob": "19310227", "mrn": "MRNCANARY771"}


def _adt(control_id: str, trigger: str = "A04", email: str = CANARY["email"]) -> bytes:
    c = CANARY
    return (f"MSH|^~\\&|EPIC|CLINIC|ONCALL|ONCALL|20250101120000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5\r"
            f"EVN|{trigger}|20250101120000\r"
            f"PID|1||{c['mrn']}^^^HOSP^MR||{c['family']}^{c['given']}||{c['dob']}|F|||1 Canary Rd^^Town"
            f"||^PRN^PH^^^555^0199778~^NET^Internet^{email}\r"
            f"PV1|1|O|CLINIC1\r").encode()


@pytest.fixture
def adapter(tmp_path: Path) -> Adapter:
    http_port = free_port()
    sandbox_port = free_port()
    env = adapter_env(tmp_path, mllp_port=free_port(), http_port=http_port,
                      extra={"ONCALL_ADAPTER_SANDBOX__PORT": str(sandbox_port),
                             "ONCALL_ADAPTER_LOGGING__LEVEL": "DEBUG"})
    proc = Adapter(tmp_path, ["serve", "--sandbox"], env, int(env["ONCALL_ADAPTER_MLLP__PORT"]),
                   f"http://127.0.0.1:{sandbox_port}")
    proc.http_url = f"http://127.0.0.1:{http_port}"  # type: ignore[attr-defined]
    yield proc  # type: ignore[misc]
    proc.stop()


def _logs(tmp: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(tmp.glob("adapter-*.log")))


def test_health_readiness_metrics_and_graceful_stop(adapter: Adapter, tmp_path: Path) -> None:
    """/healthz and /readyz answer once listening; /metrics counts what was applied; SIGTERM exits 0."""
    adapter.start()
    http = adapter.http_url  # type: ignore[attr-defined]
    assert httpx.get(f"{http}/healthz").status_code == 200
    ready = wait_until(lambda: httpx.get(f"{http}/readyz").status_code == 200 and httpx.get(f"{http}/readyz"),
                       deadline=30, what="readiness")
    assert ready.json()["checks"] == {"store": True, "mllp": True, "http": True}
    adapter.run("replay", "--mllp", f"127.0.0.1:{adapter.mllp_port}", str(_write(tmp_path, _adt("C1"))))
    wait_until(adapter.settled, deadline=60, what="the queue to settle")
    text = httpx.get(f"{http}/metrics").text
    assert 'oncall_adapter_envelopes_received_total{kind="ADT^A04",source="mllp"} 1.0' in text
    assert 'oncall_adapter_envelopes_completed_total{kind="ADT^A04",source="mllp"} 1.0' in text
    assert 'oncall_adapter_queue_depth{state="done"} 1.0' in text
    assert "oncall_adapter_processing_seconds_bucket" in text
    assert "oncall_adapter_store_size_bytes" in text
    assert adapter.proc is not None
    adapter.proc.send_signal(signal.SIGTERM)
    assert adapter.proc.wait(30) == 0
    assert '"adapter_stopped"' in _logs(tmp_path)


def _write(tmp: Path, *messages: bytes, name: str = "in.hl7") -> Path:
    path = tmp / name
    path.write_bytes(b"\n".join(messages))
    return path


def test_invalid_mapping_folder_refuses_to_start(tmp_path: Path) -> None:
    """`serve` with a broken user mapping folder exits non-zero naming the file and line."""
    user = tmp_path / "maps" / "hl7v2"
    user.mkdir(parents=True)
    (user / "adt.yaml").write_text("routes:\n  ADT_A04:\n    match: {hl7v2: {type: ADT}}\n    bogus: 1\n")
    env = adapter_env(tmp_path, mllp_port=free_port(), http_port=free_port(),
                      extra={"ONCALL_ADAPTER_MAPPINGS__DIR": str(tmp_path / "maps"),
                             "ONCALL_ADAPTER_SANDBOX__PORT": str(free_port())})
    done = subprocess.run([str(BIN), "serve", "--sandbox"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "adt.yaml:" in done.stderr


def test_sighup_reloads_mappings_and_keeps_the_old_set_when_broken(tmp_path: Path) -> None:
    """SIGHUP with a broken file keeps the running set; with a valid change it takes the new one."""
    maps = tmp_path / "maps"
    maps.mkdir()
    env = adapter_env(tmp_path, mllp_port=free_port(), http_port=free_port(),
                      extra={"ONCALL_ADAPTER_MAPPINGS__DIR": str(maps),
                             "ONCALL_ADAPTER_SANDBOX__PORT": str(free_port())})
    proc = Adapter(tmp_path, ["serve", "--sandbox"], env, int(env["ONCALL_ADAPTER_MLLP__PORT"]), "")
    proc.start()
    try:
        assert proc.proc is not None
        (maps / "broken.yaml").write_text("routes: [\n")
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: '"mappings_reload_refused"' in _logs(tmp_path), deadline=30, what="refusal")
        (maps / "broken.yaml").unlink()
        (maps / "site.yaml").write_text(
            (Path(__file__).resolve().parents[2] / "mappings" / "site.yaml").read_text()
            + "\n# edited by the operator\n")
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: '"mappings_reloaded"' in _logs(tmp_path), deadline=30, what="reload")
        versions = [json.loads(line)["mapping_version"] for line in _logs(tmp_path).splitlines()
                    if line.startswith("{") and '"mapping_version"' in line
                    and ('"adapter_started"' in line or '"mappings_reloaded"' in line)]
        assert len(versions) == 2 and versions[0] != versions[1]
    finally:
        proc.stop()


def test_no_patient_data_in_logs_on_any_path(adapter: Adapter, tmp_path: Path) -> None:
    """A canary patient goes through intake, mapping, retries (503), a dead letter (400), a refused
    message (AE) and a duplicate, with DEBUG logs on: none of its values reach the logs."""
    adapter.start()
    adapter.faults([{"path": "/contacts/", "method": "POST", "rate_503": 1.0, "times": 2}], seed=7)
    bad_email = "not-an-email-canary"
    messages = [_adt("CAN1"), _adt("CAN1"),                      # a duplicate
                _adt("CAN2", "A08"),
                _adt("CAN3", email=bad_email).replace(CANARY["mrn"].encode(), b"MRNCANARY772"),  # 400
                b"MSH|^~\\&|EPIC|CLINIC|ONCALL|ONCALL|20250101||ADT^A04|CAN4|P|2.5|||||||ZZZ\r"
                + _adt("X").split(b"\r", 1)[1]]                  # unknown charset: AE
    adapter.run("replay", "--mllp", f"127.0.0.1:{adapter.mllp_port}", str(_write(tmp_path, *messages)),
                check=False)
    wait_until(adapter.settled, deadline=90, what="the queue to settle")
    logs = _logs(tmp_path)
    assert '"retry_scheduled"' in logs and '"dead_lettered"' in logs
    for value in (*CANARY.values(), bad_email, "MRNCANARY772", "Canary Rd"):
        assert value not in logs, f"{value!r} leaked into the logs"
