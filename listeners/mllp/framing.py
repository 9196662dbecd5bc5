"""MLLP release 2 framing, as a codec over a byte stream: ``<VT> message <FS><CR>``.

The framing bytes are defined here and nowhere else. The decoder is fed whatever a read returned
(many messages in one read, one message over many reads) and yields whole frames:

- bytes before a <VT> (line feeds after <FS><CR>, keep-alive noise) are junk: skipped and counted;
- a <VT> inside a frame means the sender gave up on a partial message and started again: the
  partial bytes are counted as junk and the new message is read (``restarts`` counts this);
- <FS> must be followed by <CR>: anything else is a framing error (HL7InputError) after which the
  stream cannot be trusted, so the connection is closed (as GoogleCloudPlatform/mllp does);
- a message longer than ``max_message_bytes`` is not buffered: its first ``head_bytes`` are kept
  (enough to read MSH and answer AR), the rest is discarded up to its <FS><CR>, and the frame comes
  out with ``size`` > ``len(payload)``. Memory per connection stays bounded by the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapter.errors import HL7InputError

__all__ = ["CR", "END_BLOCK", "FS", "START_BLOCK", "VT", "Frame", "FrameDecoder", "encode_frame"]

VT = b"\x0b"                 # start block
FS = b"\x1c"                 # end block, followed by CR
CR = b"\x0d"
START_BLOCK = VT
END_BLOCK = FS + CR
_CR = CR[0]
_HEAD_BYTES = 4096           # kept of an oversized message: MSH is far shorter


def encode_frame(payload: bytes) -> bytes:
    """One message wrapped for the wire."""
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True, slots=True)
class Frame:
    """One message as it came off the wire (without <VT> and <FS><CR>)."""

    payload: bytes           # the message, or only its first bytes when oversized
    size: int                # the message's full length in bytes
    junk_before: int = 0     # bytes skipped before this frame's <VT> (since the previous frame)

    @property
    def oversized(self) -> bool:
        return self.size > len(self.payload)


class FrameDecoder:
    """Incremental MLLP decoder; one per connection. Not reusable after it raised."""

    def __init__(self, max_message_bytes: int = 1024 * 1024, *, head_bytes: int = _HEAD_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self._head_bytes = min(head_bytes, max_message_bytes)
        self._buf = bytearray()
        self._in_frame = False
        self._scanned = 0            # bytes of the frame already searched for <FS> / <VT>
        self._discarded = 0          # bytes of an oversized frame already thrown away
        self._head: bytes | None = None
        self._junk = 0               # junk since the last frame
        self.junk_total = 0          # junk over the connection's life
        self.restarts = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (at end of stream: a message cut off mid-way)."""
        return (len(self._buf) + self._discarded) if self._in_frame else 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory right now (bounded by the limit plus one read)."""
        return len(self._buf)

    @property
    def junk_pending(self) -> int:
        """Junk seen since the last frame and not yet reported with one."""
        return self._junk

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they completed (possibly none)."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        while buf:
            if not self._in_frame:
                start = buf.find(VT)
                if start < 0:
                    self._skip(len(buf))
                    buf.clear()
                    break
                self._skip(start)
                del buf[:start + 1]
                self._begin()
                continue
            end = buf.find(FS, self._scanned)
            restart = buf.find(VT, self._scanned, len(buf) if end < 0 else end)
            if restart >= 0:
                self.restarts += 1
                self._skip(self._discarded + restart + 1)   # the abandoned partial message
                del buf[:restart + 1]
                self._begin()
                continue
            if end < 0 or end + 1 == len(buf):        # no <FS> yet, or <FS> is the last byte so far
                self._scanned = len(buf) if end < 0 else end
                self._limit(keep_from=self._scanned)
                break
            if buf[end + 1] != _CR:
                raise HL7InputError(
                    f"MLLP framing: <FS> (0x1C) followed by 0x{buf[end + 1]:02X} instead of <CR> (0x0D), "
                    f"{self._discarded + end} bytes into a message", code="100",
                    hint="the sender must end every message with <FS><CR>; the connection is closed")
            size = self._discarded + end
            if self._head is not None or size > self.max_message_bytes:
                payload = self._head if self._head is not None else bytes(buf[:self._head_bytes])
            else:
                payload = bytes(buf[:end])
            frames.append(Frame(payload, size, self._junk))
            self._junk = 0
            del buf[:end + 2]
            self._in_frame = False
        return frames

    # -- internals -----------------------------------------------------------------------------
    def _begin(self) -> None:
        self._in_frame = True
        self._scanned = 0
        self._discarded = 0
        self._head = None

    def _skip(self, n: int) -> None:
        self._junk += n
        self.junk_total += n

    def _limit(self, *, keep_from: int) -> None:
        """Over the limit: keep the head once, drop scanned bytes (an <FS> at the end is kept)."""
        buf = self._buf
        if self._discarded + len(buf) <= self.max_message_bytes:
            return
        if self._head is None:
            self._head = bytes(buf[:self._head_bytes])
        self._discarded += keep_from
        del buf[:keep_from]
        self._scanned = 0
