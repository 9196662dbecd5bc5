"""Parse + map throughput of the shipped HL7 v2 routes over the samples, on one core.

    .venv/bin/python benchmarks/mapping_bench.py [--seconds 5]

Each iteration decodes nothing (payloads are pre-decoded text, as the worker holds them after
`decode_bytes`), tokenises the message and runs the matching route, building validated operations.
Prints messages per second for: tokenise only, tokenise + map, and the mapping-set load time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from adapter.hl7.er7 import Message, decode_bytes
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "hl7v2"


def _rate(fn: object, payloads: list[str], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for text in payloads:
            fn(text)  # type: ignore[operator]
        done += len(payloads)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements (the median is printed)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    mapping_set = load_mapping_set([SHIPPED_DIR], timezone="America/Toronto")
    load_ms = (time.perf_counter() - t0) * 1000
    payloads = [decode_bytes(p.read_bytes())[0] for p in sorted(SAMPLES.glob("*.hl7"))]

    def map_one(text: str) -> None:
        mapping_set.map("", text, source="mllp")

    tokenise = statistics.median(_rate(Message.parse, payloads, args.seconds) for _ in range(args.rounds))
    full = statistics.median(_rate(map_one, payloads, args.seconds) for _ in range(args.rounds))
    print(f"samples: {len(payloads)} messages, routes loaded: {len(mapping_set.routes)}")
    print(f"mapping set load (cold, hl7apy structure checks): {load_ms:.0f} ms")
    print(f"tokenise only:   {tokenise:,.0f} messages/s per core")
    print(f"tokenise + map:  {full:,.0f} messages/s per core ({1e6 / full:.0f} us per message)")


if __name__ == "__main__":
    main()
