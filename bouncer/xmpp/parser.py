"""Streaming XML parser for one client stream: bytes in, stanza elements out.

expat is used directly (not lxml's pull parser) because it reports DOCTYPE,
entity declarations, processing instructions and comments as they appear, so
they can be refused with ``restricted-xml`` before anything is expanded
(RFC 6120 §11.1, SPEC §11). Each depth-1 element becomes a detached lxml
element; nothing of it is kept once it is handed out, so memory stays bounded
by one stanza (as slixmpp's depth-counting parser does).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.parsers import expat

from lxml import etree

from bouncer.xmpp import ns


class XmlRefused(Exception):
    """Input the stream must end on; ``condition`` is the RFC 6120 stream error."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class StreamOpened:
    """The peer's ``<stream:stream>`` header: its qualified tag and attributes."""

    tag: str
    attrs: dict[str, str]
    default_ns: str | None


@dataclass(frozen=True)
class ElementReceived:
    """A complete depth-1 element (stanza or nonza)."""

    element: etree._Element


@dataclass(frozen=True)
class StreamEnded:
    """The peer sent ``</stream:stream>``."""


ParserEvent = StreamOpened | ElementReceived | StreamEnded

_SEP = "\x01"
# Wire bytes per element a stanza may average: 8192 elements within the default 256 KiB.
ELEMENT_BYTES = 32
# Everything before and including the stream header (a real one is a few hundred bytes).
HEADER_LIMIT = 16 * 1024
# Feed whole tags even where deferral can be switched off (tests exercise that path).
WHOLE_TAGS = False


def _clark(name: str) -> str:
    """expat's ``uri<SEP>local<SEP>prefix`` -> ``{uri}local``."""
    parts = name.split(_SEP)
    return f"{{{parts[0]}}}{parts[1]}" if len(parts) >= 2 else parts[0]


class StreamParser:
    """One parser per stream (RFC 6120 restarts the stream after TLS and SASL)."""

    def __init__(self, max_stanza_size: int) -> None:
        self._max = max_stanza_size
        # lxml spends ~400 bytes on an element that can take 4 on the wire (<a/>): the
        # count is bounded too, so a stanza's memory stays within ~12x its size limit.
        self._max_elements = max(256, max_stanza_size // ELEMENT_BYTES)
        self._elements = 0  # in the stanza being parsed
        self._events: list[ParserEvent] = []
        self._stack: list[etree._Element] = []
        self._pending_ns: dict[str | None, str] = {}
        self._stream_ns: dict[str | None, str] = {}
        self._stanza_start = 0
        self._fed = 0
        self._opened = False
        p = expat.ParserCreate(namespace_separator=_SEP)
        p.namespace_prefixes = True
        p.buffer_text = True
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        p.StartNamespaceDeclHandler = self._ns_decl
        p.StartDoctypeDeclHandler = self._refuse("a DOCTYPE")
        p.EntityDeclHandler = self._refuse("an entity declaration")
        p.ProcessingInstructionHandler = self._refuse("a processing instruction")
        p.CommentHandler = self._refuse("a comment")
        # expat >= 2.6 may defer a token that completes with a small chunk until more
        # data comes ("reparse deferral"): a stanza would wait for the next packet. Where
        # Python cannot switch that off (3.11.2 on Debian 12, whose expat has it
        # backported under the old version number), only whole tags are fed: up to the
        # last '>', the rest held back.
        self._held: bytes | None = None
        can_switch_off = hasattr(p, "SetReparseDeferralEnabled")
        if can_switch_off:
            p.SetReparseDeferralEnabled(False)
        if WHOLE_TAGS or not can_switch_off:
            self._held = b""
        self._p = p

    def feed(self, data: bytes) -> list[ParserEvent]:
        """Parse a chunk; return the events it completed.

        Raises XmlRefused (restricted-xml, not-well-formed, policy-violation).
        """
        self._fed += len(data)
        if self._held is not None:
            data = self._held + data
            cut = data.rfind(b">") + 1
            self._held, data = data[cut:], data[:cut]
            if len(self._held) > self._max:
                raise XmlRefused("policy-violation", f"more than {self._max} bytes without markup")
        try:
            self._p.Parse(data, False)
        except expat.ExpatError as exc:
            raise XmlRefused("not-well-formed", expat.errors.messages[exc.code]) from None
        except ValueError as exc:  # lxml refuses what expat let through, e.g. xmlns:x='a b'
            condition = "invalid-namespace" if "namespace" in str(exc).lower() else "not-well-formed"
            raise XmlRefused(condition, str(exc)) from None
        if not self._opened and self._fed > HEADER_LIMIT:
            raise XmlRefused("policy-violation", f"no stream header within {HEADER_LIMIT} bytes")
        if len(self._stack) > 0 and self._fed - self._stanza_start > self._max:
            raise XmlRefused("policy-violation", f"stanza larger than {self._max} bytes")
        events, self._events = self._events, []
        return events

    def holding(self) -> int:
        """Bytes of the stanza being received (0 between stanzas)."""
        return self._fed - self._stanza_start if self._elements else 0

    @staticmethod
    def _refuse(what: str):
        def handler(*_args: object) -> None:
            raise XmlRefused("restricted-xml", f"{what} is not allowed in XMPP")

        return handler

    def _ns_decl(self, prefix: str | None, uri: str | None) -> None:
        # ``xmlns=''`` (no namespace below here) comes as None; lxml writes it back
        # only when the element's nsmap says so explicitly.
        self._pending_ns[prefix] = uri or ""

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        decls, self._pending_ns = self._pending_ns, {}
        tag = _clark(name)
        attrib = {_clark(k): v for k, v in attrs.items()}
        depth = len(self._stack)
        if depth == 0 and not self._opened:
            self._opened = True
            etree.Element("header", nsmap=decls)  # every stanza inherits these: lxml must take them
            self._stream_ns = decls
            self._events.append(StreamOpened(tag, attrib, decls.get(None)))
            self._stack.append(None)  # type: ignore[arg-type]  # the stream root
            return
        self._elements += 1
        if self._elements > self._max_elements:
            raise XmlRefused("policy-violation", f"more than {self._max_elements} elements in one stanza")
        if depth == 1:
            self._stanza_start = self._p.CurrentByteIndex
            nsmap = {k: v for k, v in self._stream_ns.items() if v != ns.STREAMS}
            nsmap.update(decls)
            el = etree.Element(tag, attrib, nsmap=nsmap)
        else:
            el = etree.SubElement(self._stack[-1], tag, attrib, nsmap=decls or None)
        self._stack.append(el)

    def _end(self, name: str) -> None:
        el = self._stack.pop()
        depth = len(self._stack)
        if depth == 0:
            self._events.append(StreamEnded())
        elif depth == 1:
            self._elements = 0
            if self._p.CurrentByteIndex - self._stanza_start > self._max:
                raise XmlRefused("policy-violation", f"stanza larger than {self._max} bytes")
            self._events.append(ElementReceived(el))

    def _text(self, data: str) -> None:
        if len(self._stack) < 2:
            return  # whitespace keepalives between stanzas
        el = self._stack[-1]
        if len(el):
            last = el[-1]
            last.tail = (last.tail or "") + data
        else:
            el.text = (el.text or "") + data
