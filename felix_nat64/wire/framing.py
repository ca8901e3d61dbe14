"""Felix's frame format: an 8-byte little-endian length, then a protobuf.

Felix writes `ToDataplane` messages this way on the driver's fd 3 and reads
`FromDataplane` messages the same way from fd 4.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<Q")
HEADER_LEN = HEADER.size

# Felix's largest real messages (big IP sets) are a few MiB; anything near
# this cap is a corrupt length field, and allocating it could kill the node.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class FramingError(Exception):
    """The byte stream is not a sequence of well-formed frames.

    Once framing is lost there is no way to find the next frame boundary, so
    the only safe reaction is to stop reading (Felix restarts the driver).
    """


class FrameDecoder:
    """Splits a byte stream into frame bodies, whatever the read boundaries."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes
        self.frames_decoded = 0
        self.bytes_consumed = 0
        self.error: FramingError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Adds bytes and returns every frame body that is now complete.

        Frames before a corrupt length are returned whatever the read
        boundaries; the corruption is then in `error`, and the next call
        (or `finish`) raises it.
        """
        if self.error is not None:
            raise self.error
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end_of_data = len(buf)
        unpack_from = HEADER.unpack_from
        while end_of_data - pos >= HEADER_LEN:
            (length,) = unpack_from(buf, pos)
            if length > self._max:
                self.error = FramingError(
                    f"frame length {length} bytes at stream offset "
                    f"{self.bytes_consumed + pos} exceeds the {self._max}-byte cap; "
                    "the stream is corrupt or not a Felix dataplane stream"
                )
                del buf[pos + HEADER_LEN:]  # nothing after a corrupt length is kept
                break
            end = pos + HEADER_LEN + length
            if end > end_of_data:
                break
            frames.append(bytes(buf[pos + HEADER_LEN : end]))
            pos = end
        if pos:
            del buf[:pos]
            self.bytes_consumed += pos
            self.frames_decoded += len(frames)
        return frames

    @property
    def pending_bytes(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)

    def finish(self) -> None:
        """Declares end of stream; a partial trailing frame is an error."""
        if self.error is not None:
            raise self.error
        if self._buf:
            raise FramingError(
                f"stream ended inside a frame: {len(self._buf)} bytes of an incomplete "
                f"frame at stream offset {self.bytes_consumed}"
            )


def encode_frame(body: bytes) -> bytes:
    """Prefixes one serialized protobuf with its length."""
    return HEADER.pack(len(body)) + body

