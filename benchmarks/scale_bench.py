"""Scaling benchmark: 1, 2 and 3 `oncall-adapter serve` processes on one PostgreSQL against 1 on SQLite.

    .venv/bin/python benchmarks/scale_bench.py [--patients 300] [--per-patient 10] [--latency-ms 0 50]
                                               [--setups sqlite:1 postgres:1 postgres:2 postgres:3]
                                               [--window 1 32] [--profile] [--out FILE.json]

Per setup, two phases, each with the real command as subprocesses and `oncall-adapter sandbox` in its
own process (tests/e2e/delivery_harness.py starts both):

- ingest: the nodes run with `workers.count = 0` (nothing delivered) and one MLLP connection per node
  receives its share of the messages; MLLP ACKs per second, with `--window` messages in flight per
  connection (1: a classic sender waiting for each ACK; 32: a pipelining sender).
- delivery: the nodes are restarted with the default worker pool (4 x 8, `oncall.max_in_flight` 8) and
  drain what was ingested; envelopes applied per second between 10% and 90% done, for every
  `--latency-ms` (the sandbox answers each API call after that delay, like a distant OnCall).

The messages are those of tests/e2e/test_multi_node.py: per patient an ADT^A04 (contact look-ups
and a create: 3-4 OnCall requests) then ADT^A08s (one contact PATCH each).

Where the time goes: CPU seconds of each part over each phase (adapter nodes, the sandbox, every
PostgreSQL process on the machine, this load generator) from /proc, against the machine's capacity;
`--profile` also runs node 0 of each delivery phase under cProfile and prints its top functions.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.delivery_harness import BIN, Adapter, sandbox_process, wait_until  # noqa: E402
from tests.e2e.multi_node_harness import PG_DSN, Feeder, StoreView, node_env, patient_messages, pg_schema  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


# -- CPU accounting from /proc -------------------------------------------------------------------
def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS          # utime + stime


def _pids(match: Callable[[str, int], bool]) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if match(cmdline, ppid):
            out.append(int(entry.name))
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


@dataclass
class CpuMeter:
    """CPU seconds per part between start() and stop()."""

    nodes: list[int]
    parts: dict[str, float] = field(default_factory=dict)
    _start: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        me = os.getpid()
        sandbox = _pids(lambda cmd, ppid: ppid == me and " sandbox " in f"{cmd} ")
        postgres = _pids(lambda cmd, ppid: cmd.startswith("postgres"))
        busy, total = _machine_busy()
        return {"nodes": sum(_proc_cpu(p) for p in self.nodes), "sandbox": sum(_proc_cpu(p) for p in sandbox),
                "postgres": sum(_proc_cpu(p) for p in postgres), "load generator": _proc_cpu(me),
                "machine busy": busy, "machine capacity": total}

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        # postgres backends come and go: a backend that exited in between is not counted (underestimate)
        self.parts = {k: round(max(end[k] - self._start.get(k, 0.0), 0.0), 1) for k in end}
        return self.parts


# -- one setup ------------------------------------------------------------------------------------
@dataclass
class Result:
    setup: str
    nodes: int
    messages: int
    ingest: dict[str, Any] = field(default_factory=dict)       # window -> {msg_per_s, seconds, cpu}
    delivery: dict[str, Any] = field(default_factory=dict)     # latency -> {env_per_s, seconds, cpu}


class SQLiteView:
    """The same read-out as StoreView, on a SQLite store file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def by_state(self) -> dict[str, int]:
        if not self.path.exists():
            return {}
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return dict(conn.execute("SELECT state, count(*) FROM envelopes GROUP BY state").fetchall())
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()

    def close(self) -> None:
        pass


def _start_all(nodes: list[Adapter]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        for future in [pool.submit(node.start) for node in nodes]:
            future.result()


def _stop_all(nodes: list[Adapter]) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda node: node.stop(), nodes))


NODE_PATH: list[str] = []     # --node-path: extra import paths for the nodes (try a package first)
NODE_ENV: dict[str, str] = {}  # --set: extra settings for every node (ONCALL_ADAPTER_... variables)


def _make_nodes(tmp: Path, backend: str, count: int, schema: str, sandbox_url: str, tag: str,
                extra: dict[str, str]) -> list[Adapter]:
    nodes = []
    extra = {**NODE_ENV, **extra}
    if NODE_PATH:
        extra = {**extra, "PYTHONPATH": os.pathsep.join([str(ROOT), *NODE_PATH])}
    for index in range(count):
        home = tmp / f"{tag}-node{index}"
        home.mkdir(exist_ok=True)
        url = PG_DSN if backend == "postgres" else f"sqlite:///{tmp / 'adapter.db'}"
        env, mllp = node_env(home, store_url=url, sandbox_url=sandbox_url,
                             schema=schema if backend == "postgres" else None, extra=extra)
        nodes.append(Adapter(home, ["serve"], env, mllp, sandbox_url))
    return nodes


def _messages(patients: range, per_patient: int, nodes: int) -> dict[int, list[bytes]]:
    """Each patient's stream on one node's connection (patient % nodes), interleaved across patients.
    Every run takes new patients, so it stores new envelopes and creates new contacts."""
    streams = [patient_messages(p, per_patient) for p in patients]
    batches: dict[int, list[bytes]] = {n: [] for n in range(nodes)}
    for seq in range(per_patient):
        for patient, stream in zip(patients, streams, strict=True):
            batches[patient % nodes].append(stream[seq])
    return batches


def _ingest(tmp: Path, backend: str, count: int, schema: str, sandbox_url: str,
            batches: dict[int, list[bytes]], window: int, tag: str) -> dict[str, Any]:
    nodes = _make_nodes(tmp, backend, count, schema, sandbox_url, tag,
                        {"ONCALL_ADAPTER_WORKERS__COUNT": "0"})   # ingest only: nothing delivered
    try:
        _start_all(nodes)
        feeder = Feeder({i: node.mllp_port for i, node in enumerate(nodes)}, window=window, deadline=600)
        meter = CpuMeter([n.proc.pid for n in nodes if n.proc])
        try:
            meter.start()
            started = time.monotonic()
            lost = feeder.send(batches)
            seconds = time.monotonic() - started
            cpu = meter.stop()
        finally:
            feeder.close()
        assert not lost, "a node dropped its connection during the ingest phase"
        total = sum(len(b) for b in batches.values())
        return {"msg_per_s": round(total / seconds), "seconds": round(seconds, 2), "cpu": cpu}
    finally:
        _stop_all(nodes)


def _deliver(tmp: Path, backend: str, count: int, schema: str, sandbox_url: str, view: Any, total: int,
             tag: str, profile: Path | None) -> dict[str, Any]:
    nodes = _make_nodes(tmp, backend, count, schema, sandbox_url, tag, {})
    prof_path = profile or tmp / "unused.prof"
    if profile:   # node 0 under cProfile (it writes the file when serve returns after SIGTERM)
        os.environ["ONCALL_E2E_SERVE"] = f"{sys.executable} -m cProfile -o {prof_path} {BIN}"
    try:
        try:
            nodes[0].start()
        finally:
            os.environ.pop("ONCALL_E2E_SERVE", None)
        if count > 1:
            _start_all(nodes[1:])
        meter = CpuMeter([n.proc.pid for n in nodes if n.proc])
        meter.start()
        marks: list[tuple[float, int]] = []

        def done() -> bool:
            finished = view.by_state().get("done", 0)
            marks.append((time.monotonic(), finished))
            return finished >= total

        wait_until(done, deadline=1800, what=f"{total} envelopes done", interval=0.25)
        cpu = meter.stop()
        low = next(m for m in marks if m[1] >= 0.1 * total)
        high = next(m for m in marks if m[1] >= 0.9 * total)
        rate = (high[1] - low[1]) / max(high[0] - low[0], 1e-6)
        by_state = view.by_state()
        assert by_state == {"done": total}, by_state
    finally:
        _stop_all(nodes)
    result: dict[str, Any] = {"env_per_s": round(rate, 1), "seconds": round(marks[-1][0] - marks[0][0], 1),
                              "cpu": cpu}
    if profile and prof_path.exists():
        result["profile"] = _top_functions(prof_path)
    return result


_AREAS = (   # (area, substring of the code's file name), first match wins
    ("store (psycopg / sqlite3)", "psycopg"), ("store (psycopg / sqlite3)", "sqlite3"),
    ("store (adapter)", "adapter/store/"), ("OnCall client (httpx, httpcore)", "httpx/"),
    ("OnCall client (httpx, httpcore)", "httpcore/"), ("OnCall client (adapter)", "adapter/oncall/"),
    ("mapping", "adapter/mapping/"), ("mapping", "adapter/hl7/"), ("worker", "adapter/worker/"),
    ("MLLP listener", "listeners/mllp/"), ("logging (structlog)", "structlog/"),
    ("logging (structlog)", "adapter/logging"), ("metrics", "prometheus_client/"),
    ("start-up (imports, compile)", "importlib"), ("start-up (imports, compile)", "builtins.compile"),
    ("start-up (imports, compile)", "marshal"), ("event loop (asyncio, anyio)", "asyncio/"),
    ("event loop (asyncio, anyio)", "anyio/"), ("event loop (asyncio, anyio)", "select.epoll"),
    ("event loop (asyncio, anyio)", "_socket.socket"), ("pydantic", "pydantic"),
)


def _area(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    return next((area for area, needle in _AREAS if needle in where), "other")


def _top_functions(path: Path, limit: int = 10) -> list[str]:
    """Node 0's own time (tottime) by area, then its top functions; time blocked in epoll (idle,
    waiting for the network or the database) is left out of both."""
    stats = pstats.Stats(str(path)).stats   # type: ignore[attr-defined]
    busy = {key: value for key, value in stats.items() if "select.epoll" not in key[2]}
    total = sum(v[2] for v in busy.values()) or 1.0
    areas: dict[str, float] = {}
    for (filename, _line, name), value in busy.items():
        areas[_area(filename, name)] = areas.get(_area(filename, name), 0.0) + value[2]
    idle = sum(v[2] for k, v in stats.items() if "select.epoll" in k[2])
    out = [f"busy {total:.1f} s, blocked in epoll {idle:.1f} s; busy time by area:"]
    out += [f"  {100 * t / total:5.1f}%  {area}" for area, t in sorted(areas.items(), key=lambda a: -a[1])]
    out.append("top functions (own time):")
    for (filename, line, name), value in sorted(busy.items(), key=lambda kv: -kv[1][2])[:limit]:
        short = filename.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        out.append(f"  {100 * value[2] / total:5.1f}%  {short}:{line} {name}")
    return out


def run_setup(setup: str, args: argparse.Namespace, base: Path, *, profile: Path | None = None) -> Result:
    """Ingest once per --window; the i-th ingest is then drained at the i-th --latency-ms. With
    `profile`, node 0 of each delivery runs under cProfile (its figures are then not comparable)."""
    backend, count_text = setup.split(":")
    count = int(count_text)
    tmp = base / f"{backend}-{count}{'-profiled' if profile else ''}"
    tmp.mkdir()
    result = Result(setup, count, args.patients * args.per_patient)
    with pg_schema("scale") as schema, sandbox_process(tmp) as sandbox_url:
        view: Any = StoreView(schema) if backend == "postgres" else SQLiteView(tmp / "adapter.db")
        try:
            ingested = 0
            for run, window in enumerate(args.window):
                patients = range(run * args.patients, (run + 1) * args.patients)
                batches = _messages(patients, args.per_patient, count)
                result.ingest[str(window)] = _ingest(tmp, backend, count, schema, sandbox_url, batches,
                                                     window, f"in{run}")
                ingested += result.messages
                print(f"  {setup} ingest window {window}: {result.ingest[str(window)]}", flush=True)
                if run >= len(args.latency_ms):
                    continue
                latency = args.latency_ms[run]
                _reset_sandbox(sandbox_url, latency)
                result.delivery[str(latency)] = _deliver(tmp, backend, count, schema, sandbox_url, view,
                                                         ingested, f"dl{run}", profile)
                shown = {k: v for k, v in result.delivery[str(latency)].items() if k != "profile"}
                print(f"  {setup} delivery latency {latency} ms: {shown}", flush=True)
        finally:
            view.close()
    return result


def _reset_sandbox(url: str, latency_ms: int) -> None:
    import httpx

    httpx.post(f"{url}/__sandbox__/reset", timeout=30).raise_for_status()
    if latency_ms:
        rules = [{"path": "/*", "latency_ms": latency_ms}]
        httpx.post(f"{url}/__sandbox__/faults", json={"rules": rules, "seed": 1},
                   timeout=30).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--per-patient", type=int, default=10)
    parser.add_argument("--setups", nargs="+", default=["sqlite:1", "postgres:1", "postgres:2", "postgres:3"])
    parser.add_argument("--window", type=int, nargs="+", default=[1, 32],
                        help="messages in flight per MLLP connection during ingest (one run each)")
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[0, 50],
                        help="sandbox latency per API call during delivery (one run each)")
    parser.add_argument("--profile", type=Path, metavar="FILE.prof",
                        help="afterwards, one more postgres:1 run (first window, first latency) with its "
                             "node under cProfile, saved to FILE.prof; its rate is not comparable")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--node-path", nargs="+", default=[], metavar="DIR",
                        help="extra import paths for the serve processes (e.g. a package installed with "
                             "`pip install --target DIR`, to measure it before adding it)")
    parser.add_argument("--set", nargs="+", default=[], metavar="VAR=VALUE",
                        help="settings for every node, e.g. ONCALL_ADAPTER_ONCALL__MAX_IN_FLIGHT=24 "
                             "(one process with three times the concurrency, against three processes)")
    args = parser.parse_args()
    NODE_PATH.extend(args.node_path)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not name.startswith("ONCALL_ADAPTER_") or not sep:
            parser.error(f"--set {item!r}: expected ONCALL_ADAPTER_<SECTION>__<KEY>=VALUE")
        NODE_ENV[name] = value
    if len(args.latency_ms) > len(args.window):
        parser.error("each delivery run drains one ingest run: "
                     "give at least as many --window as --latency-ms")
    print(f"{CPUS} CPUs; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    results = []
    profiled_result: Result | None = None
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for setup in args.setups:
            print(f"{setup}:", flush=True)
            results.append(run_setup(setup, args, Path(tmp)))
        if args.profile:
            print("profiled run (postgres:1, node under cProfile):", flush=True)
            profiled = argparse.Namespace(**{**vars(args), "window": args.window[:1],
                                             "latency_ms": args.latency_ms[:1]})
            profiled_result = run_setup("postgres:1", profiled, Path(tmp), profile=args.profile)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    _print_table(results, args)
    if profiled_result is not None:
        print("\nWhere node 0's time goes (postgres:1 under cProfile, delivery at "
              f"{args.latency_ms[0]} ms):")
        for line in profiled_result.delivery[str(args.latency_ms[0])].get("profile", []):
            print(f"  {line}")
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2))


def _print_table(results: list[Result], args: argparse.Namespace) -> None:
    print("\n| setup | " + " | ".join(f"ingest w={w} msg/s" for w in args.window) + " | "
          + " | ".join(f"delivery {lat} ms env/s" for lat in args.latency_ms) + " |")
    print("|---|" + "---:|" * (len(args.window) + len(args.latency_ms)))
    for r in results:
        cells = [str(r.ingest.get(str(w), {}).get("msg_per_s", "-")) for w in args.window]
        cells += [str(r.delivery.get(str(lat), {}).get("env_per_s", "-")) for lat in args.latency_ms]
        print(f"| {r.setup} | " + " | ".join(cells) + " |")
    print("\nCPU seconds per part (ingest at the last window, delivery at each latency; postgres is every "
          "postgres process on the machine, other users' included):")
    for r in results:
        last = r.ingest.get(str(args.window[-1]), {})
        print(f"  {r.setup} ingest: {last.get('cpu')}")
        for lat in args.latency_ms:
            d = r.delivery.get(str(lat), {})
            print(f"  {r.setup} delivery {lat} ms: {d.get('cpu')}")
            for line in d.get("profile", []):
                print(f"      {line}")


if __name__ == "__main__":
    main()
