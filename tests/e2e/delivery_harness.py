"""End-to-end harness for the delivery tests: the real `oncall-adapter` command as a subprocess, the
OnCall sandbox (inside `serve --sandbox`, or as its own `oncall-adapter sandbox` process), and an
oracle that computes the OnCall state the samples must produce from their mapped operations."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapter.cli.replay import read_messages
from adapter.hl7.er7 import Message as Er7
from adapter.mapping.loader import default_dirs, load_mapping_set

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "hl7v2"
BIN = Path(sys.executable).with_name("oncall-adapter")
START_DEADLINE = 60.0

__all__ = ["Adapter", "Expected", "adapter_env", "expected_state", "free_port", "sandbox_process",
           "wait_until"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, *, deadline: float, what: str, interval: float = 0.1) -> Any:
    """Re-check `check()` until it returns something truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(interval)   # polling interval of a condition held by another process


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def adapter_env(tmp: Path, *, mllp_port: int, http_port: int,
                extra: dict[str, str] | None = None) -> dict[str, str]:
    """Configuration by environment: a store in tmp, ports given, small retry caps so faults resolve fast."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_ADAPTER_")}
    env.update({
        "PYTHONPATH": str(ROOT),
        "ONCALL_ADAPTER_STORE__URL": f"sqlite:///{tmp / 'adapter.db'}",
        "ONCALL_ADAPTER_STORE__LEASE_SECONDS": "3",
        "ONCALL_ADAPTER_MLLP__PORT": str(mllp_port),
        "ONCALL_ADAPTER_HTTP__PORT": str(http_port),
        "ONCALL_ADAPTER_RETRY__BASE_SECONDS": "0.05",
        "ONCALL_ADAPTER_RETRY__CAP_SECONDS": "0.5",
        "ONCALL_ADAPTER_RETRY__MAX_ATTEMPTS": "200",
        "ONCALL_ADAPTER_WORKERS__POLL_SECONDS": "0.05",
        "ONCALL_ADAPTER_LOGGING__FORMAT": "json",
    })
    env.update(extra or {})
    return env


@dataclass
class Adapter:
    """`oncall-adapter serve` in a subprocess; restartable; SIGKILL-able."""

    tmp: Path
    args: list[str]
    env: dict[str, str]
    mllp_port: int
    sandbox_url: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        log = open(self.tmp / f"adapter-{self.starts}.log", "wb")   # noqa: SIM115 - closed with the process
        self.starts += 1
        # ONCALL_E2E_SERVE: another command line to run instead of the installed `oncall-adapter`.
        command = os.environ.get("ONCALL_E2E_SERVE", str(BIN)).split()
        self.proc = subprocess.Popen([*command, *self.args], cwd=self.tmp, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: self._alive() and _accepts(self.mllp_port), deadline=START_DEADLINE,
                   what=f"the adapter to listen on MLLP {self.mllp_port} (see {self.tmp}/adapter-*.log)")

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = sorted(self.tmp.glob("adapter-*.log"))[-1].read_text(errors="replace")[-3000:]
            raise AssertionError(
                f"`oncall-adapter {' '.join(self.args)}` exited with {self.proc.returncode}:\n{log}")
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Another `oncall-adapter` command on the same configuration (queue, replay ...)."""
        done = subprocess.run([str(BIN), *args], cwd=self.tmp, env=self.env, capture_output=True, text=True,
                              timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(
                f"oncall-adapter {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def queue(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("queue", "--json").stdout)
        return data

    def settled(self) -> dict[str, Any] | None:
        """The queue summary once nothing waits or runs (None while work remains)."""
        summary = self.queue()
        states = summary["by_state"]
        return None if states.get("queued") or states.get("claimed") else summary

    def state(self) -> dict[str, Any]:
        response = httpx.get(f"{self.sandbox_url}/__sandbox__/state", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def faults(self, rules: list[dict[str, Any]], seed: int) -> None:
        httpx.post(f"{self.sandbox_url}/__sandbox__/faults", json={"rules": rules, "seed": seed},
                   timeout=10).raise_for_status()


@contextmanager
def sandbox_process(tmp: Path) -> Iterator[str]:
    """`oncall-adapter sandbox` on its own (it must outlive adapter restarts), state in a file."""
    port = free_port()
    with open(tmp / "sandbox.log", "wb") as log:
        proc = subprocess.Popen([str(BIN), "sandbox", "--port", str(port), "--db", str(tmp / "sandbox.db"),
                                 "--page-size", "50"], cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until(lambda: proc.poll() is None and _accepts(port), deadline=START_DEADLINE,
                   what=f"the sandbox on port {port} (see {tmp}/sandbox.log)")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


# -- the oracle ---------------------------------------------------------------------------------
@dataclass
class Expected:
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)        # EMR id -> fields
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)    # EMR appt id -> fields
    emails: dict[str, int] = field(default_factory=dict)                     # kind -> count


_CONTACT = ("first_name", "last_name", "email", "phone", "sex", "date_of_birth")
_APPOINTMENT = ("title", "type", "datetime", "duration", "division", "provider")


def _norm(key: str, value: Any) -> Any:
    """Compare what may be spelt differently: URLs by path (hosts differ), datetimes in UTC."""
    if value is None:
        return None
    if key in ("division", "provider"):
        return urlsplit(value).path
    if key == "datetime":
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).isoformat()
    return value


def sample_messages() -> list[bytes]:
    return [m.payload for m in read_messages([SAMPLES])]


def expected_state(messages: list[bytes]) -> Expected:
    """What OnCall must hold after `messages` are applied in order, computed from their operations."""
    mapping_set = load_mapping_set(default_dirs(None))
    out = Expected()

    def mail(kind: str, n: int) -> None:
        out.emails[kind] = out.emails.get(kind, 0) + n

    for payload in messages:
        parsed = Er7.parse(payload.decode("latin-1"))
        result = mapping_set.map(f"{parsed.message_type}^{parsed.trigger}", payload, source="mllp")
        for op in (o.to_json() for o in result.operations):
            if op["kind"] == "contact_upsert":
                fields = {k: op.get(k) for k in _CONTACT}
                known = out.contacts.get(op["emr_patient_id"])
                if known is not None:
                    fields["email"] = known["email"]          # e-mail is sent on create only
                out.contacts[op["emr_patient_id"]] = fields
            elif op["kind"] == "appointment_upsert":
                fields = {k: _norm(k, op.get(k)) for k in _APPOINTMENT}
                fields["metadata"] = {**op.get("metadata", {}),
                                      "emr_appointment_id": op["emr_appointment_id"]}
                fields["participants"] = sorted(
                    (p.get("first_name"), p.get("last_name"), p.get("email")) for p in op["participants"])
                fields["cancelled"] = False
                known = out.appointments.get(op["emr_appointment_id"])
                if known is None or known["cancelled"]:
                    mail("invitation", len(op["participants"]))
                elif (known["datetime"], known["duration"]) != (fields["datetime"], fields["duration"]):
                    mail("appointment_rescheduled", len(op["participants"]))
                out.appointments[op["emr_appointment_id"]] = fields
            elif op["kind"] == "appointment_cancel":
                known = out.appointments.get(op["emr_appointment_id"])
                if known is not None and not known["cancelled"]:
                    known["cancelled"] = True
                    mail("appointment_cancelled", len(known["participants"]))
    return out


def observed_state(state: dict[str, Any]) -> Expected:
    """The sandbox's state in the oracle's shape (by EMR ids), for a field-by-field comparison."""
    out = Expected()
    for contact in state["contacts"]:
        emr_id = contact["custom_field_values"].get("2")
        assert emr_id not in out.contacts, f"two contacts carry EMR id {emr_id!r}"
        out.contacts[emr_id] = {k: contact.get(k) for k in _CONTACT}
    for appointment in state["appointments"]:
        if appointment["cancelled"] and any(a["metadata"] == appointment["metadata"] and not a["cancelled"]
                                            for a in state["appointments"]):
            continue   # replaced by a re-created one (un-cancel)
        emr_id = appointment["metadata"]["emr_appointment_id"]
        assert emr_id not in out.appointments, f"two appointments carry EMR appointment id {emr_id!r}"
        fields = {k: _norm(k, appointment.get(k)) for k in _APPOINTMENT}
        fields["metadata"] = appointment["metadata"]
        fields["participants"] = sorted((p.get("first_name"), p.get("last_name"), p.get("email"))
                                        for p in appointment["participants"])
        fields["cancelled"] = appointment["cancelled"]
        out.appointments[emr_id] = fields
    for email in state["emails"]:
        out.emails[email["kind"]] = out.emails.get(email["kind"], 0) + 1
    return out
