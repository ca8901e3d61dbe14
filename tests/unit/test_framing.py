import struct

import pytest

from felix_nat64.wire.framing import MAX_FRAME_BYTES, FrameDecoder, FramingError, encode_frame


def frames_of(*bodies: bytes) -> bytes:
    return b"".join(encode_frame(b) for b in bodies)


def test_many_frames_in_one_read() -> None:
    data = frames_of(b"a", b"", b"ccc" * 100)
    assert FrameDecoder().feed(data) == [b"a", b"", b"ccc" * 100]


@pytest.mark.parametrize("split", [1, 3, 7, 8, 9, 13])
def test_split_reads_at_every_boundary(split: int) -> None:
    data = frames_of(b"hello", b"world!", b"x" * 1000)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(data), split):
        out.extend(decoder.feed(data[i : i + split]))
    decoder.finish()
    assert out == [b"hello", b"world!", b"x" * 1000]
    assert decoder.frames_decoded == 3
    assert decoder.bytes_consumed == len(data)


def test_partial_header_waits_for_more() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack("<Q", 4)[:5]) == []
    assert decoder.pending_bytes == 5
    assert decoder.feed(struct.pack("<Q", 4)[5:] + b"body") == [b"body"]


def test_oversize_length_is_refused_before_allocating() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack("<Q", MAX_FRAME_BYTES + 1) + b"x" * 100) == []
    assert decoder.error is not None and "exceeds the 67108864-byte cap" in str(decoder.error)
    assert decoder.pending_bytes == 8  # nothing beyond the header was buffered
    with pytest.raises(FramingError, match="exceeds"):
        decoder.feed(b"more")
    with pytest.raises(FramingError, match="exceeds"):
        decoder.finish()


def test_frames_before_a_corrupt_length_are_kept_whatever_the_reads() -> None:
    data = frames_of(b"one", b"two") + b"\xff" * 8
    whole = FrameDecoder()
    assert whole.feed(data) == [b"one", b"two"] and whole.error is not None
    split = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(data)):
        got += split.feed(data[i:i + 1])
        if split.error:
            break
    assert got == [b"one", b"two"]


def test_cap_is_configurable_and_inclusive() -> None:
    decoder = FrameDecoder(max_frame_bytes=4)
    assert decoder.feed(encode_frame(b"1234")) == [b"1234"]
    assert decoder.feed(encode_frame(b"12345")) == []
    assert decoder.error is not None


def test_truncated_frame_at_end_of_stream() -> None:
    data = frames_of(b"complete") + encode_frame(b"truncated")[:-3]
    decoder = FrameDecoder()
    assert decoder.feed(data) == [b"complete"]
    with pytest.raises(FramingError, match="stream ended inside a frame"):
        decoder.finish()


def test_garbage_bytes_are_a_framing_error() -> None:
    garbage = b"\xff" * 16  # reads as a length of 2**64 - 1
    decoder = FrameDecoder()
    assert decoder.feed(garbage) == []
    with pytest.raises(FramingError, match="exceeds"):
        decoder.finish()


def test_frames_across_chunks() -> None:
    data = frames_of(b"one", b"two")
    decoder = FrameDecoder()
    assert [f for chunk in (data[:5], data[5:11], data[11:]) for f in decoder.feed(chunk)] == [b"one", b"two"]
    decoder.finish()
