"""The MLLP framing codec: whole messages out of any byte stream, junk counted, limits kept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import HL7InputError
from listeners.mllp.framing import CR, END_BLOCK, FS, START_BLOCK, VT, FrameDecoder, encode_frame

# message bodies never hold the framing bytes; junk never holds <VT> (it would start a frame)
bodies = st.binary(max_size=300).map(lambda b: b.replace(VT, b"").replace(FS, b""))
junks = st.binary(max_size=20).map(lambda b: b.replace(VT, b""))


def feed_in_pieces(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += [f.payload for f in decoder.feed(stream[last:cut])]
        last = cut
    return out


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.tuples(junks, bodies), max_size=8), tail=junks,
       cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_of_any_stream_yields_the_same_messages(
        messages: list[tuple[bytes, bytes]], tail: bytes, cuts: list[int]) -> None:
    """However a stream of frames with junk between them is cut into reads, the same messages come out
    in order, and every junk byte is counted."""
    stream = b"".join(junk + encode_frame(body) for junk, body in messages) + tail
    decoder = FrameDecoder(max_message_bytes=1024)
    assert feed_in_pieces(decoder, stream, cuts) == [body for _, body in messages]
    assert decoder.junk_total == sum(len(j) for j, _ in messages) + len(tail)
    assert decoder.pending == 0


def test_frame_bytes_are_defined_once_and_wrap_a_message() -> None:
    """encode_frame puts <VT> before and <FS><CR> after the message."""
    assert (VT, FS, CR) == (b"\x0b", b"\x1c", b"\r")
    assert START_BLOCK == VT and END_BLOCK == FS + CR
    assert encode_frame(b"MSH|") == b"\x0bMSH|\x1c\r"


def test_fs_and_cr_split_over_two_reads() -> None:
    """An <FS> that ends one read and a <CR> that starts the next still close the frame."""
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bMSH|a\x1c") == []
    frames = decoder.feed(b"\r")
    assert [f.payload for f in frames] == [b"MSH|a"]


def test_many_messages_in_one_read_report_junk_before_each() -> None:
    """Several frames in one read come out together; each says how much junk preceded it."""
    decoder = FrameDecoder()
    frames = decoder.feed(b"\r\n\x0bA\x1c\r\n\x0bB\x1c\rxyz\x0bC\x1c\r")
    assert [(f.payload, f.junk_before) for f in frames] == [(b"A", 2), (b"B", 1), (b"C", 3)]


def test_fs_without_cr_is_a_framing_error() -> None:
    """<FS> followed by anything but <CR> raises HL7InputError naming both bytes."""
    decoder = FrameDecoder()
    with pytest.raises(HL7InputError, match=r"<FS> \(0x1C\) followed by 0x0A instead of <CR>"):
        decoder.feed(b"\x0bMSH|x\x1c\n")


def test_vt_inside_a_frame_restarts_it() -> None:
    """A sender that abandons a partial message and starts again with <VT> gets the new message read;
    the abandoned bytes count as junk."""
    decoder = FrameDecoder()
    frames = decoder.feed(b"\x0bMSH|partial\x0bMSH|whole\x1c\r")
    assert [f.payload for f in frames] == [b"MSH|whole"]
    assert decoder.restarts == 1
    assert frames[0].junk_before == len(b"\x0bMSH|partial")


def test_oversized_message_is_cut_to_its_head_and_memory_stays_bounded() -> None:
    """A message over the limit is not buffered: its head is kept, the rest discarded up to <FS><CR>,
    and the next message is read normally."""
    decoder = FrameDecoder(max_message_bytes=2048, head_bytes=512)
    msh = b"MSH|^~\\&|A|B|C|D|||ADT^A04|BIG1|P|2.5\r"
    assert decoder.feed(b"\x0b" + msh) == []
    chunk = b"Z" * 4096
    for _ in range(100):                       # 400 KiB through a 2 KiB limit
        assert decoder.feed(chunk) == []
        assert decoder.buffered <= 2048 + len(chunk)
    frames = decoder.feed(b"\x1c\r\x0bMSH|small\x1c\r")
    assert len(frames) == 2
    big, small = frames
    assert big.oversized and big.size == len(msh) + 100 * len(chunk)
    assert big.payload == (msh + chunk)[:512]
    assert not small.oversized and small.payload == b"MSH|small"


def test_oversized_message_in_a_single_read() -> None:
    """A whole oversized frame in one read comes out as its head with its full size."""
    decoder = FrameDecoder(max_message_bytes=1024, head_bytes=100)
    [frame] = decoder.feed(encode_frame(b"M" * 5000))
    assert frame.oversized and frame.size == 5000 and frame.payload == b"M" * 100


def test_oversized_message_with_fs_at_a_read_boundary() -> None:
    """While discarding an oversized message, an <FS> at the end of a read is kept for the <CR> to come."""
    decoder = FrameDecoder(max_message_bytes=1024, head_bytes=10)
    assert decoder.feed(b"\x0b" + b"x" * 3000 + b"\x1c") == []
    [frame] = decoder.feed(b"\r")
    assert frame.size == 3000 and frame.payload == b"x" * 10


def test_exactly_at_the_limit_is_accepted() -> None:
    """A message of exactly max_message_bytes is whole, one byte more is oversized."""
    decoder = FrameDecoder(max_message_bytes=1024)
    [ok] = decoder.feed(encode_frame(b"a" * 1024))
    [over] = decoder.feed(encode_frame(b"a" * 1025))
    assert not ok.oversized and len(ok.payload) == 1024
    assert over.oversized and over.size == 1025


def test_partial_message_at_end_of_stream_is_reported() -> None:
    """Bytes of a frame that never ended are visible as `pending` (the listener logs them)."""
    decoder = FrameDecoder()
    decoder.feed(b"junk\x0bMSH|cut")
    assert decoder.pending == len(b"MSH|cut")
    assert decoder.junk_total == 4
