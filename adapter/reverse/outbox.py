"""The outbox target: one JSON file per Bundle in a folder another system picks up.

Each file is written atomically (a temporary file in the same folder, fsync, rename, fsync of the
folder), so a reader never sees half a Bundle and a crash leaves either the whole file or none.
The name is derived from the delivery (received time, object, content hash), so a retry of the
same delivery rewrites the same file instead of adding a second one; names sort by arrival.
Readers should ignore names starting with ``.`` (the temporary files).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import anyio

from adapter.errors import ConfigError, TransientError
from adapter.reverse.bundle import canonical_json
from adapter.reverse.targets import Delivery, DeliveryResult

__all__ = ["OutboxTarget", "outbox_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def outbox_name(delivery: Delivery) -> str:
    key = _UNSAFE.sub("-", delivery.key.replace("oncall_", ""))
    return f"{delivery.at.strftime('%Y%m%dT%H%M%S%fZ')}-{key}-{delivery.output_hash[:12]}.json"


class OutboxTarget:
    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("emr.outbox_dir", str(directory),
                              f"a folder the adapter can create and write ({exc.strerror})") from exc

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        name = outbox_name(delivery)
        data = canonical_json(delivery.bundle)
        try:
            await anyio.to_thread.run_sync(_write_atomically, self.directory, name, data)
        except OSError as exc:
            raise TransientError(f"cannot write {self.directory / name}: {exc.strerror}",
                                 hint="check emr.outbox_dir: free space and permissions") from None
        return DeliveryResult("outbox", receipt=name)

    async def aclose(self) -> None:
        return None


def _write_atomically(directory: Path, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)   # the rename itself survives a power loss
    finally:
        os.close(dir_fd)

