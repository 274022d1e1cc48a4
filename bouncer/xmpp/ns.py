"""XML namespaces the bouncer speaks, in one place so that tags are spelled once."""

CLIENT = "jabber:client"
STREAMS = "http://etherx.jabber.org/streams"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
SM = "urn:xmpp:sm:3"
SASL_CB = "urn:xmpp:sasl-cb:0"  # XEP-0440: the channel-binding types a server supports
XML = "http://www.w3.org/XML/1998/namespace"

ROSTER = "jabber:iq:roster"
VERSION = "jabber:iq:version"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
CAPS = "http://jabber.org/protocol/caps"
PING = "urn:xmpp:ping"
TIME = "urn:xmpp:time"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
HINTS = "urn:xmpp:hints"
CHATSTATES = "http://jabber.org/protocol/chatstates"
CSI = "urn:xmpp:csi:0"
MAM = "urn:xmpp:mam:2"
MAM_NAMESPACES = (MAM, "urn:xmpp:mam:1")
RSM = "http://jabber.org/protocol/rsm"
DATA = "jabber:x:data"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
STANZA_ID = "urn:xmpp:sid:0"


def q(ns: str, local: str) -> str:
    """Clark notation ``{ns}local``, the form lxml uses for qualified names."""
    return f"{{{ns}}}{local}"
