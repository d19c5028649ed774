"""SIP message framing on stream transports (RFC 3261 §18.3, §7.5; RFC 5626 §3.5.1).

Theory of operation
-------------------
TCP delivers bytes, not messages. :class:`StreamFramer` cuts them back into messages, h11
style: ``receive_data(data)`` only buffers, and ``next_message()`` returns one whole message
(start line, headers, blank line and exactly ``Content-Length`` body bytes) or ``None`` when
it needs more data. The glue drains it after every read::

    framer.receive_data(data)
    while (message := framer.next_message()) is not None:
        handle(message)                     # parse with switch.message, run transactions
    if pong := framer.data_to_send():
        transport.write(pong)

Per message the framer goes through two phases:

1. Between messages it skips CR and LF (RFC 3261 §7.5: ignore CRLF before the start line).
   RFC 5626 §3.5.1 makes a double CRLF a keep-alive *ping* that the server answers with one
   CRLF *pong*: every second line end in a run counts as a ping, and the pongs owed are
   collected by :meth:`StreamFramer.data_to_send` (``b"\\r\\n"`` per ping).
2. From the first other byte it looks for the blank line ending the header section, resuming
   the search where the last one stopped (minus two bytes, the longest partial terminator),
   so data arriving a byte at a time costs linear, not quadratic, time. Line ends may be
   CRLF or a bare LF, as lenient parsers accept. It then reads ``Content-Length`` (or the
   compact ``l``, RFC 3261 §7.3.3), which a stream message must carry (§18.3 and §20.14),
   and waits for that many body bytes.

Limits keep a peer from making us buffer without end: the header section may not exceed
``max_header`` bytes and a whole message (headers and body) ``max_message`` bytes. Both are
checked as soon as they can be, before the body arrives. SIP has no 431, so an oversized
header section is 513 Message Too Large like an oversized message (RFC 3261 §21.5.14). After
``next_message()`` returns ``None``, the framer holds less than ``max_message`` bytes (one
partial message); a single ``receive_data()`` adds one read's worth on top.

Errors are :class:`FramingError` subclasses (of :class:`~switch.errors.SipParseError`, so
``status`` and ``reason`` are the response to send if the edge answers at all; the two
513 kinds are also :class:`~switch.errors.MessageTooLarge`). A stream that failed to frame
cannot be resynchronised (where would the next message start?), so after an error the
framer stays failed, re-raising the same error, and **the caller must close the
connection** (after sending the error response, if any).
The framer does not parse the start line or any header but ``Content-Length``; that is
``switch.message``'s job on each message returned.
"""

from __future__ import annotations

import re
from typing import Final

from switch import errors
from switch.errors import SipParseError
from switch.message import MAX_HEADER, MAX_MESSAGE, stateless_response

__all__ = [
    "BadContentLength",
    "ContentLengthRequired",
    "ContentTooLarge",
    "FramingError",
    "HeaderTooLarge",
    "StreamFramer",
    "error_response",
]


class FramingError(SipParseError):
    """The peer's byte stream cannot be cut into SIP messages; close the connection.

    ``status`` is the response to send (400 unless a subclass says otherwise) and ``reason``
    the explanation, as for every :class:`~switch.errors.SipParseError`. ``head`` holds the
    message's header section as far as it was read (for :func:`error_response`).
    """

    head: bytes = b""


class ContentLengthRequired(FramingError):
    """RFC 3261 §18.3: a message on a stream transport must carry Content-Length."""


class BadContentLength(FramingError):
    """Content-Length is not a decimal number, or two disagree."""


class HeaderTooLarge(FramingError, errors.MessageTooLarge):
    """The header section exceeds ``max_header`` (no blank line in time): 513."""


class ContentTooLarge(FramingError, errors.MessageTooLarge):
    """Headers plus ``Content-Length`` exceed ``max_message`` (RFC 3261 §21.5.14): 513."""


# The blank line ending the header section: CRLF CRLF, or bare LFs from lenient peers.
_HEADER_END: Final = re.compile(rb"\n\r?\n")
_TERMINATOR_BACKOFF: Final = 2  # a match is at most 3 bytes; keep 2 to find a split one
# RFC 3261 §7.3.1: a line starting with white space continues the previous header line.
_FOLD: Final = re.compile(rb"\r?\n[ \t]+")
_LINE_SPLIT: Final = re.compile(rb"\r?\n")
_CONTENT_LENGTH_NAMES: Final = frozenset({b"content-length", b"l"})
_MAX_LENGTH_DIGITS: Final = 18  # far above any limit; keeps int() away from huge inputs
_CR: Final = 13
_LF: Final = 10


class StreamFramer:
    """Cuts a SIP byte stream (TCP, TLS) into messages; one per connection.

    Args:
        max_message: the largest whole message (header section plus body) in bytes.
        max_header: the largest header section (start line to blank line) in bytes.
    """

    def __init__(self, max_message: int = MAX_MESSAGE, max_header: int = MAX_HEADER) -> None:
        if max_header <= 0 or max_message <= 0:
            raise ValueError(f"limits must be positive: {max_message=} {max_header=}")
        if max_header > max_message:
            raise ValueError(f"max_header {max_header} exceeds max_message {max_message}")
        self.max_message: Final = max_message
        self.max_header: Final = max_header
        self.pings = 0  # RFC 5626 double-CRLF pings seen so far (for metrics)
        self._buf = bytearray()
        self._pos = 0  # first byte not yet consumed
        self._in_message = False  # _pos is a start line, not CRLF between messages
        self._scan = 0  # where the header-end search resumes
        self._end: int | None = None  # end of the current message once headers are read
        self._line_ends = 0  # LFs in the current run between messages
        self._pongs_owed = 0
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned or skipped."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the connection.

        Raises:
            FramingError: the stream already failed; close the connection.
        """
        if self._error is not None:
            raise self._error
        if self._pos:
            # Drop what was consumed once per read, not once per message: deleting the
            # head of a bytearray moves the rest, so doing it per message would be
            # quadratic in messages per read.
            del self._buf[: self._pos]
            self._scan -= self._pos
            if self._end is not None:
                self._end -= self._pos
            self._pos = 0
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next whole message, or ``None`` until more data arrives.

        Raises:
            FramingError: the stream cannot be framed; send ``status`` if you like, then
                close the connection. Every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except FramingError as exc:
            if not exc.head:
                start = self._pos
                exc.head = bytes(self._buf[start : start + self.max_header])
            self._error = exc
            raise

    def data_to_send(self) -> bytes:
        """Bytes owed to the peer: one CRLF pong per ping received (RFC 5626 §3.5.1)."""
        owed, self._pongs_owed = self._pongs_owed, 0
        return b"\r\n" * owed

    def _next(self) -> bytes | None:
        buf = self._buf
        size = len(buf)
        if not self._in_message and not self._skip_line_ends(size):
            return None
        start = self._pos
        if self._end is None:
            match = _HEADER_END.search(buf, max(self._scan, start))
            if match is None:
                if size - start > self.max_header:
                    raise HeaderTooLarge(
                        f"header section exceeds {self.max_header} bytes without a blank line"
                    )
                self._scan = max(start, size - _TERMINATOR_BACKOFF)
                return None
            header_end = match.end()
            header_size = header_end - start
            if header_size > self.max_header:
                raise HeaderTooLarge(
                    f"header section of {header_size} bytes exceeds {self.max_header}"
                )
            length = _content_length(bytes(buf[start:header_end]))
            if header_size + length > self.max_message:
                raise ContentTooLarge(
                    f"message of {header_size} + {length} bytes (Content-Length {length}) "
                    f"exceeds {self.max_message}"
                )
            self._end = header_end + length
        end = self._end
        if size < end:
            return None
        message = bytes(buf[start:end])
        self._pos = self._scan = end
        self._end = None
        self._in_message = False
        return message

    def _skip_line_ends(self, size: int) -> bool:
        """Skip CR/LF before a start line, counting pings; True once a start line begins."""
        buf = self._buf
        pos = self._pos
        while pos < size:
            byte = buf[pos]
            if byte == _LF:
                self._line_ends += 1
                # RFC 5626 §3.5.1: CRLF CRLF is a ping; a lone CRLF (a pong, or slack after
                # a body) is not.
                if self._line_ends % 2 == 0:
                    self.pings += 1
                    self._pongs_owed += 1
            elif byte != _CR:
                self._pos = self._scan = pos
                self._in_message = True
                self._line_ends = 0
                return True
            pos += 1
        self._pos = self._scan = pos
        return False


def _content_length(header: bytes) -> int:
    """The body length declared in a header section (start line included)."""
    lines = _LINE_SPLIT.split(_FOLD.sub(b" ", header))
    found: int | None = None
    for line in lines[1:]:  # lines[0] is the start line
        name, colon, value = line.partition(b":")
        if not colon or name.strip().lower() not in _CONTENT_LENGTH_NAMES:
            continue
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise BadContentLength(f"Content-Length {text[:32]!r} is not a decimal number")
        if len(text) > _MAX_LENGTH_DIGITS:
            raise ContentTooLarge(f"Content-Length of {len(text)} digits")
        length = int(text)
        if found is not None and found != length:
            raise BadContentLength(f"conflicting Content-Length values {found} and {length}")
        found = length
    if found is None:
        raise ContentLengthRequired("Content-Length required on stream transport")
    return found


def error_response(exc: FramingError) -> bytes | None:
    """What to send before closing the connection after ``exc``: ``status`` and ``reason`` in
    a response built from the message's own Via, From, To, Call-ID and CSeq, so the peer can
    match it. None when the message was a response, an ACK or had no Via (send nothing)."""
    return stateless_response(exc.head, exc.status, exc.reason)
