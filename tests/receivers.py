"""A real HTTP server that receives webhooks, for the webhook tests: asyncio streams on a free
port of 127.0.0.1, HTTP/1.1 read by hand (request line, headers, a Content-Length body), each
request kept with what it was answered. `answers` says what the next requests get."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    #: What the next requests are answered, in order: a status, (status, extra headers),
    #: "slow" (a 200 after half a second) or "hang" (never answered); once used up, 200.
    answers: list[int | tuple[int, dict[str, str]] | str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {}
            for h in lines:
                if h:
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.received.append(Received(method, path, headers, body))
            self.arrived.set()
            answer = self.answers.pop(0) if self.answers else 200
            if answer == "hang":
                await asyncio.sleep(3600)
            elif answer == "slow":
                await asyncio.sleep(0.5)
                answer = 200
            status, extra = answer if isinstance(answer, tuple) else (answer, {})
            more = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            reply = f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{more}connection: close\r\n"
            writer.write(f"{reply}\r\nok".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            await receiver.handle(reader, writer)
        finally:
            if task is not None:
                tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
