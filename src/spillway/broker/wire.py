"""Send a batch of commands on one connection, packed by hand.

For batches of thousands of script calls, redis-py's generic command packer was most of the
cost of an enqueue (it type-checks and encodes every argument through several layers); this
builds the RESP bytes in one pass and reads the replies in order.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool
from redis.exceptions import ResponseError

__all__ = ["Batch", "pack"]


def pack(args: list[Any]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


class Batch:
    """Commands collected for one round trip. Error replies come back as exception objects."""

    def __init__(self) -> None:
        self.commands: list[list[Any]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(["EVALSHA", sha, numkeys, *keys_and_args])

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.commands.append(["HINCRBY", key, field, amount])

    async def send(self, pool: ConnectionPool, only: list[int] | None = None) -> list[Any]:
        """Send the commands (or those at the indices `only`) and read their replies."""
        chosen = self.commands if only is None else [self.commands[i] for i in only]
        if not chosen:
            return []
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(b"".join(pack(c) for c in chosen), check_health=False)
            replies: list[Any] = []
            for _ in chosen:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # the connection is still in step: keep reading
                    replies.append(exc)
            return replies
        except BaseException:
            # Cancelled or broken mid-batch: the connection's state is unknown, drop it.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
