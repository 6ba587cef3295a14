"""A seekable, read-only file over one S3 object, fetched by ranged GETs: decoders that
jump around a file (an MP4's index at its end, a PDF's cross-reference table) read only
what they need, and memory stays at ``blocks`` x ``block_size`` whatever the file's size."""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BLOCK_SIZE = 1024 * 1024
BLOCKS = 4


class RangedReader(io.RawIOBase):
    """``s3``: a boto3 S3 client; ``size``: the object's length in bytes."""

    def __init__(
        self,
        s3: S3Client,
        *,
        bucket: str,
        key: str,
        size: int,
        block_size: int = BLOCK_SIZE,
        blocks: int = BLOCKS,
    ) -> None:
        super().__init__()
        self._s3, self._bucket, self._key = s3, bucket, key
        self._size = size
        self._block_size = block_size
        self._most = blocks
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        self.fetched = 0  # bytes read from the bucket (the render's log line)
        self.requests = 0
        # What the bucket answered when a read failed: a decoder calling this reader may
        # turn the exception into its own error, so the caller looks here.
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index, offset = divmod(self._pos, self._block_size)
            block = self._block(index)
            piece = block[offset : offset + len(view) - done]
            if not piece:
                break
            view[done : done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        start = index * self._block_size
        end = min(self._size, start + self._block_size) - 1
        try:
            answer = self._s3.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end}"
            )
            body = answer["Body"]
            try:
                block = bytes(body.read())
            finally:
                body.close()
        except Exception as exc:
            self.error = exc
            raise
        self.fetched += len(block)
        self.requests += 1
        self._blocks[index] = block
        while len(self._blocks) > self._most:
            self._blocks.popitem(last=False)
        return block
