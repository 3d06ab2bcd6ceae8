"""The stage streams' shared protocol: one `start` message, then `chunk` messages."""

from __future__ import annotations

from typing import Any, AsyncIterator

from services.common.errors import InvalidRequest


async def open_stream(
    requests: AsyncIterator[Any], rpc: str, chunk_field: str = "chunk"
) -> tuple[Any, AsyncIterator[Any]] | None:
    """(the start message's `start`, an iterator of the later messages' `chunk_field`), or None
    when the caller closed the stream without sending anything. Out-of-order messages are
    InvalidRequest naming the rule."""
    messages = requests.__aiter__()
    first = await anext(messages, None)
    if first is None:
        return None
    if first.WhichOneof("payload") != "start":
        raise InvalidRequest(f"the first {rpc} message must set `start`")

    async def chunks() -> AsyncIterator[Any]:
        async for message in messages:
            if message.WhichOneof("payload") != chunk_field:
                raise InvalidRequest(f"only the first {rpc} message may set `start`; later ones set `{chunk_field}`")
            yield getattr(message, chunk_field)

    return first.start, chunks()
