"""The decode worker: a child process that parses and decodes uploads, one at a time, under a hard memory
limit (`RLIMIT_DATA`, set on itself once its imports are done), so that no decoder's hidden buffers
(libjpeg's coefficient arrays, a container's embedded frames, libwebp's canvas) can take the server's
memory, and the server can kill it when it runs over time (`decode_pool.DecodePool`).

It imports only Pillow, numpy and the shared decoding code (`fashionrec.data.images`). It speaks a framed
protocol on stdin/stdout, with no pickle either way (its output is read by the server; whatever a
hostile file did to this process, it can only send a refusal or an RGB raster):

- request: 4-byte big-endian length + JSON `{"size": n, "crop": [l, t, r, b] | null}`, then n bytes;
- reply: 4-byte length + JSON, either `{"ok": true, "width": w, "height": h}` followed by w*h*3 RGB bytes,
  or `{"ok": false, "status": 4xx, "kind": ..., "message": ..., "exit": bool}` (`exit`: the worker quits
  after a memory refusal, its heap possibly fragmented; the pool starts another).
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import struct
import sys
from typing import IO, Any

from fashionrec.core.errors import DataError, ImageRefused, ImageTooLarge

MIB = 2**20
FRAME = struct.Struct(">I")


def refusal(exc: DataError) -> tuple[int, str]:
    """The HTTP status and kind of a decoder's refusal: the client's input, never the server's trouble."""
    if isinstance(exc, ImageTooLarge):
        return 413, "decompression_bomb"
    if isinstance(exc, ImageRefused):
        status = {"too_costly": 413, "unsupported_format": 415}.get(exc.kind, 422)
        return status, exc.kind
    return 400, "bad_image"


def write_frame(out: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    out.write(FRAME.pack(len(head)) + head)
    if payload:
        out.write(payload)
    out.flush()


def read_exact(src: IO[bytes], n: int) -> bytes | None:
    """n bytes from a buffered pipe (one allocation: the upload is not copied), or None at its end."""
    data = src.read(n)
    return data if len(data) == n else None


def vm_data_bytes() -> int:
    """This process's data segment now (/proc/self/status VmData): heap and private anonymous mappings;
    0 where there is no /proc (not Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def limit_memory(budget_bytes: int) -> int | None:
    """Cap the data segment at what it holds now plus `budget_bytes`: past that, allocations fail
    (MemoryError, or a decoder's own out-of-memory error) instead of growing the pod's memory. Returns
    the cap, or None where the data segment cannot be read (no cap: said on stderr)."""
    now = vm_data_bytes()
    if now == 0:
        print("decode worker: no /proc/self/status; running without a memory cap", file=sys.stderr)
        return None
    cap = now + budget_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    return cap


def fits(nbytes: int) -> bool:
    """Whether `nbytes` can still be allocated under this process's memory limit (nothing is touched)."""
    try:
        mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS).close()   # what RLIMIT_DATA counts
    except (OSError, MemoryError):
        return False
    return True


def too_costly(memory_mb: int) -> dict[str, Any]:
    return {"ok": False, "status": 413, "kind": "too_costly", "exit": True,
            "message": f"decoding this image needs more than the {memory_mb} MiB one upload may use"}


def decode_one(data: bytes, crop: tuple[float, float, float, float] | None, limits: Any,
               memory_mb: int) -> tuple[dict[str, Any], bytes]:
    """One upload -> (reply header, RGB bytes): checked, decoded reduced, cropped; or a refusal."""
    from fashionrec.data.images import check_structure, decode_bounded, probe_image

    cost = 0
    try:
        check_structure(data, limits.max_segments, limits.max_scans)
        cost = probe_image(data, limits, crop=crop).decode_bytes
        img = decode_bounded(data, limits, crop=crop)
        raw = img.tobytes()
        return {"ok": True, "width": img.width, "height": img.height}, raw
    except MemoryError:
        return too_costly(memory_mb), b""
    except DataError as exc:
        status, kind = refusal(exc)
        text = str(exc)
        # a decoder's own allocation failure under the limit (libjpeg reports "broken data stream") is
        # a cost: told apart from a broken file by whether the header's estimate still fits
        if kind == "bad_image" and (cost and not fits(cost) or "memory" in text.lower()):
            return too_costly(memory_mb), b""
        return {"ok": False, "status": status, "kind": kind, "message": text, "exit": False}, b""


def main() -> None:
    """Serve decode requests on stdin/stdout until stdin closes."""
    from PIL import Image

    from fashionrec.data.images import DecodeLimits
    from fashionrec.serve.memory import tune_allocator

    cfg = json.loads(sys.argv[1])
    memory_mb = int(cfg.pop("memory_mb"))
    cfg["formats"] = tuple(cfg["formats"]) if cfg.get("formats") else None
    limits = DecodeLimits(**cfg)
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    tune_allocator(256 * 1024, 1)    # large blocks mmapped (freed at once), one arena: RSS falls back
    src, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr          # a stray print must not corrupt the protocol
    cap = limit_memory(memory_mb * MIB)
    write_frame(out, {"ready": True, "pid": os.getpid(), "data_limit": cap})
    while True:
        head = read_exact(src, FRAME.size)
        if head is None:
            return
        request = json.loads(read_exact(src, FRAME.unpack(head)[0]) or b"{}")
        try:
            data = read_exact(src, int(request["size"]))
        except MemoryError:   # the upload itself does not fit: refuse, and quit (the pipe is mid-request)
            data = b""
        if data is None:
            return
        crop = tuple(request["crop"]) if request.get("crop") else None
        if data:
            header, payload = decode_one(data, crop, limits, memory_mb)   # type: ignore[arg-type]
        else:
            header, payload = too_costly(memory_mb), b""
        del data
        write_frame(out, header, payload)
        if header.get("exit"):
            return


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
