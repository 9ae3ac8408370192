"""A small pool of killable decode worker processes (`decode_worker`): every byte of an upload is parsed
there, never on the event loop nor in the server's own memory.

Each worker holds a hard memory limit (`decode_memory_mb` over its own baseline, `RLIMIT_DATA`); each job
a deadline (`decode_timeout_s`). A job past its deadline, or whose client went away, has its worker
killed (SIGKILL) and replaced in the background; the answer is then 413 `too_costly` when the worker spent
most of the deadline on the CPU (the input is what costs), else 503 `busy` (the machine was slow, not the
input). A worker that dies on its own (OOM killer, a decoder crash) gives 503 `decode_failed`. Never a
500: the server's process never runs the decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from dataclasses import asdict
from typing import Any

from PIL import Image

from fashionrec.core.errors import BadRequest, ServiceUnavailable
from fashionrec.data.images import DecodeLimits
from fashionrec.serve.decode_worker import FRAME

log = logging.getLogger(__name__)
MIB = 2**20
MAX_HEADER = 64 * 1024
START_TIMEOUT_S = 120.0     # a worker's imports, on a loaded machine


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat); 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Worker:
    """One decode process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.jobs = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read_frame(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        size = FRAME.unpack(await self.proc.stdout.readexactly(FRAME.size))[0]
        if size > MAX_HEADER:
            raise ConnectionError(f"decode worker {self.pid} sent a {size}-byte header")
        return json.loads(await self.proc.stdout.readexactly(size))

    async def run(self, data: bytes, crop: tuple[float, float, float, float] | None,
                  max_raster: int) -> Image.Image | dict[str, Any]:
        """Send one upload; the decoded RGB image, or the worker's refusal (a dict)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.jobs += 1
        head = json.dumps({"size": len(data), "crop": list(crop) if crop else None}).encode()
        self.proc.stdin.write(FRAME.pack(len(head)) + head)
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()
        reply = await self.read_frame()
        if not reply.get("ok"):
            return reply
        w, h = int(reply["width"]), int(reply["height"])
        if not (w > 0 and h > 0 and w * h * 3 <= max_raster):
            raise ConnectionError(f"decode worker {self.pid} announced a {w}x{h} raster")
        raw = await self.proc.stdout.readexactly(w * h * 3)
        return Image.frombytes("RGB", (w, h), raw)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class DecodePool:
    """`workers` decode processes; `decode` waits for an idle one (the admission queue bounds how many
    wait), runs the job under the deadline and hands the worker back, or replaces it."""

    def __init__(self, workers: int, memory_mb: int, timeout_s: float, limits: DecodeLimits,
                 retry_after_s: int) -> None:
        self.size = workers
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.limits = limits
        self.retry_after_s = retry_after_s
        self.killed = 0            # workers killed (deadline, disconnect) or lost
        self.workers: set[Worker] = set()
        self._dying: set[Worker] = set()     # killed, not yet reaped
        self._idle: asyncio.Queue[Worker] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _command(self) -> list[str]:
        cfg = {**asdict(self.limits), "memory_mb": self.memory_mb}
        cfg["formats"] = list(cfg["formats"]) if cfg["formats"] else None
        return [sys.executable, "-m", "fashionrec.serve.decode_worker", json.dumps(cfg)]

    async def _spawn(self) -> None:
        cmd = self._command()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, env=env)
        worker = Worker(proc)
        try:
            ready = await asyncio.wait_for(worker.read_frame(), START_TIMEOUT_S)
            if not ready.get("ready"):
                raise ConnectionError(f"decode worker {worker.pid} did not start: {ready}")
        except BaseException:
            worker.kill()
            await proc.wait()
            raise
        self.workers.add(worker)
        assert self._idle is not None
        self._idle.put_nowait(worker)

    async def start(self) -> None:
        """Start every worker (on the serving loop) and wait until each has set its memory limit."""
        self._idle = asyncio.Queue()
        await asyncio.gather(*(self._spawn() for _ in range(self.size)))

    async def close(self) -> None:
        """Stop replacing workers, then kill every worker and reap it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in [*self.workers, *self._dying]:
            worker.kill()
            with contextlib.suppress(ProcessLookupError):
                await worker.proc.wait()
        self.workers.clear()
        self._dying.clear()

    def _replace(self, worker: Worker) -> None:
        """Kill `worker` now; wait for it and start its successor in the background."""
        worker.kill()
        self.workers.discard(worker)
        self._dying.add(worker)
        self.killed += 1

        async def respawn() -> None:
            await worker.proc.wait()
            self._dying.discard(worker)
            while True:
                try:
                    await self._spawn()
                    return
                except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    log.error("decode worker failed to start (%s); retrying", exc)
                    await asyncio.sleep(1.0)

        task = asyncio.get_running_loop().create_task(respawn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def idle(self) -> int:
        return self._idle.qsize() if self._idle is not None else 0

    async def decode(self, data: bytes, crop: tuple[float, float, float, float] | None) -> Image.Image:
        """The upload decoded (reduced, cropped, RGB), or a 4xx naming why not, or a 503."""
        if self._idle is None:
            raise ServiceUnavailable("the decoders are not started yet", kind="not_ready",
                                     retry_after_s=self.retry_after_s)
        worker = await self._idle.get()
        started = cpu_seconds(worker.pid)
        back = False
        try:
            result = await asyncio.wait_for(worker.run(data, crop, self.memory_mb * MIB), self.timeout_s)
        except TimeoutError:
            spent = cpu_seconds(worker.pid) - started
            if spent >= 0.5 * self.timeout_s:
                raise BadRequest(f"decoding this image took over {self.timeout_s:g} s; the limit is "
                                 f"{self.timeout_s:g} s", status=413, kind="too_costly") from None
            raise ServiceUnavailable(f"the server is busy (a decode did not finish within {self.timeout_s:g} "
                                     f"s); retry in {self.retry_after_s} s", kind="busy",
                                     retry_after_s=self.retry_after_s) from None
        except (ConnectionError, asyncio.IncompleteReadError, json.JSONDecodeError, OSError) as exc:
            log.error("decode worker %d lost: %s", worker.pid, exc)
            raise ServiceUnavailable(f"the image decoder stopped; retry in {self.retry_after_s} s",
                                     kind="decode_failed", retry_after_s=self.retry_after_s) from None
        else:
            if isinstance(result, Image.Image):
                back = True
                return result
            back = not result.get("exit")
            status = int(result.get("status", 422))
            raise BadRequest(str(result.get("message", "the image was refused"))[:1000],
                             status=status if 400 <= status < 500 else 422,
                             kind=str(result.get("kind", "bad_image"))[:40])
        finally:   # also on cancellation (the client went away): a busy worker is killed, not waited for
            if back:
                self._idle.put_nowait(worker)
            else:
                self._replace(worker)
