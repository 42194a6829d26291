"""A tiny in-process forward proxy for tests: CONNECT tunnels and absolute-form HTTP.

It records every request head it receives (``heads``: list of (request line, lower-case headers))
and pipes bytes to the target named by the request. One target per client connection.
"""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class FakeProxy:
    def __init__(self, *, connect_status: int = 200) -> None:
        self.heads: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.connect_status = connect_status
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "FakeProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Own task so teardown can cancel it while the server's callback task ends normally.
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_writer = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            self.heads.append((lines[0], headers))
            method, target, _ = lines[0].split(" ", 2)
            if method == "CONNECT":
                if self.connect_status != 200:
                    writer.write(b"HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n\r\n" % self.connect_status)
                    await writer.drain()
                    return
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = b""
            else:
                parts = urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
                origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                first = head.replace(target.encode("latin-1"), origin_form.encode("latin-1"), 1)
            up_writer.write(first)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if up_writer is not None:
                up_writer.close()
            writer.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            if dst.can_write_eof():
                try:
                    dst.write_eof()
                except OSError:
                    pass
