"""Length-prefixed JSON messages over a stream socket (harness, fork server, sessions).

JSON, never pickle: a session runs untrusted code, so nothing it sends may be
able to run code in the harness.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!I")
# Code cells and replies are small; anything bigger is garbage from a broken peer.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ProtocolError(RuntimeError):
    """The peer closed the channel or sent something that is not a message."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = encode(message)
    if fds:
        # The descriptors travel with the first bytes of the message.
        sent = socket.send_fds(sock, [data], fds)
        data = data[sent:]
    if data:
        sock.sendall(data)


def recv(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """Block until one whole message arrives; EOF or garbage raises ProtocolError."""
    fds: list[int] = []
    if max_fds:
        head, fds, _, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
        head += _recv_exact(sock, _HEADER.size - len(head)) if head else b""
        if not head:
            raise ProtocolError("channel closed")
    else:
        head = _recv_exact(sock, _HEADER.size)
    (length,) = _HEADER.unpack(head)
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {length} bytes is too large")
    return decode(_recv_exact(sock, length)), fds


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError, MemoryError) as exc:
        # A forged message may hold a 10**5-digit number or JSON nested 10**5 deep.
        raise ProtocolError(f"not a message: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a message: not a JSON object")
    return message


class MessageReader:
    """Reassembles messages from non-blocking reads (the harness side of a session)."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """Add bytes; return the first complete message, if any."""
        self._buffer += data
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max_bytes:
            raise ProtocolError(f"message of {length} bytes is too large")
        if len(self._buffer) < _HEADER.size + length:
            return None
        body = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
        del self._buffer[: _HEADER.size + length]
        return decode(body)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ProtocolError("channel closed")
        chunks += chunk
    return bytes(chunks)
