"""Reading an image file from disk, refusing what is no regular file or too large before reading
it, and what does not start like an image after reading only its first bytes."""

from __future__ import annotations

import os
import stat

from masktfx.images.base import HEADER_BYTES, RegionInputError, reader_for


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes. Anything but a regular file (a FIFO, a device, a socket) is refused
    without being opened; a file over `max_bytes`, or one whose first bytes are not an image's,
    is refused before the rest is read."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise RegionInputError("is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise RegionInputError("not a regular file (a FIFO, device or socket); refused "
                                   "without opening it")
        if max_bytes is not None and info.st_size > max_bytes:
            raise RegionInputError(f"file is {info.st_size} bytes, more than an image within "
                                   f"max_pixels can take ({max_bytes}); refused before reading")
        # O_NONBLOCK: should the path have become a FIFO since the check, opening cannot hang
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise RegionInputError("not a regular file; refused")
            head = handle.read(HEADER_BYTES)
            reader_for(head)
            return head + handle.read()
    except FileNotFoundError:
        raise RegionInputError("file not found") from None
    except PermissionError:
        raise RegionInputError("permission denied") from None
    except OSError as exc:
        raise RegionInputError(f"cannot read file: {exc.strerror or exc}") from None
