"""`oncall-adapter reconcile` as a subprocess against the sandbox (uvicorn on port 0) and a SQLite store:
the report files, the --fix preview and --yes queueing, argument errors, and the privacy warning."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio

from adapter.envelope import Source, State
from adapter.store.sqlite import SQLiteStore
from tests.integration.oncall_fixtures import TOKEN, SandboxHandle, make_oncall_sandbox

__all__ = ["make_oncall_sandbox"]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).with_name("oncall-adapter")
PATIENT = {"resourceType": "Patient", "id": "P2", "name": [{"family": "Missing", "given": ["Bo"]}],
           "telecom": [{"system": "email", "value": "bo@example.org"}], "birthDate": "1981-02-03"}


def cli(tmp_path: Path, sandbox: SandboxHandle, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCALL_ADAPTER_")}
    env.update(ONCALL_ADAPTER_ONCALL__BASE_URL=sandbox.base_url, ONCALL_ADAPTER_ONCALL__API_KEY=TOKEN,
               ONCALL_ADAPTER_STORE__URL=f"sqlite:///{tmp_path / 'adapter.db'}", PYTHONPATH=str(ROOT))
    return subprocess.run([str(BIN), "reconcile", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def queued(tmp_path: Path) -> list[tuple[Source, str, State]]:
    async def read() -> list[tuple[Source, str, State]]:
        store = SQLiteStore(tmp_path / "adapter.db")
        await store.open()
        try:
            return [(e.source, e.ordering_key, e.state) for e in await store.list(limit=100)]
        finally:
            await store.close()

    return anyio.run(read)


def test_reports_preview_and_queue(tmp_path: Path, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:
    """A JSON report goes to a file readable by the owner only, the summary to stderr; --fix without --yes
    queues nothing; --fix --yes queues one RECONCILE envelope per patient; the HTML report stands alone."""
    sandbox = make_oncall_sandbox(page_size=2)
    sandbox.seed(contacts=[{"first_name": "No", "last_name": "Id", "email": "noid@example.org"}])
    export = tmp_path / "emr.ndjson"
    export.write_text(json.dumps(PATIENT) + "\n", encoding="utf-8")

    done = cli(tmp_path, sandbox, "--emr-export", str(export), "--format", "json", "--output", "r.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {f["kind"] for f in report["findings"]} == {"missing_in_oncall", "contact_without_emr_id"}
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o600
    assert "2 findings" in done.stderr and done.stdout == ""

    preview = cli(tmp_path, sandbox, "--emr-export", str(export), "--fix")
    assert preview.returncode == 0, preview.stderr
    assert "--fix would queue 1 envelopes" in preview.stdout and "nothing queued" in preview.stdout
    assert any(line.startswith("2 findings: ") for line in preview.stdout.splitlines())
    assert queued(tmp_path) == []

    applied = cli(tmp_path, sandbox, "--emr-export", str(export), "--fix", "--yes", "--format", "html",
                  "--output", "r.html")
    assert applied.returncode == 0, applied.stderr
    assert "queued 1 envelopes (1 operations)" in applied.stdout
    assert queued(tmp_path) == [(Source.RECONCILE, "patient:P2", State.QUEUED)]
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.split("<body>")[0].replace(
        "http-equiv", "")


def test_argument_errors_and_help(tmp_path: Path, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:
    """--yes without --fix and an empty window are refused with a hint; --help warns of patient data."""
    sandbox = make_oncall_sandbox()
    refused = cli(tmp_path, sandbox, "--yes")
    assert refused.returncode == 1 and "--yes confirms --fix" in refused.stderr
    window = cli(tmp_path, sandbox, "--since", "2030-02-01", "--until", "2030-01-01")
    assert window.returncode == 1 and "is not after --since" in window.stderr
    bad = cli(tmp_path, sandbox, "--since", "yesterday")
    assert bad.returncode == 2 and "not YYYY-MM-DD" in bad.stderr
    assert "PATIENT DATA" in cli(tmp_path, sandbox, "--help").stdout
