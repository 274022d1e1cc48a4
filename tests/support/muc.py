"""Room helpers for tests: create rooms on the real Prosody, join, wait for join completion."""

from __future__ import annotations

import itertools

from lxml import etree

from support.clients import Client

MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
MUC_OWNER = "http://jabber.org/protocol/muc#owner"
_ids = itertools.count(1)


def codes(el: etree._Element) -> set[str]:
    return {s.get("code") for s in el.iter(f"{{{MUC_USER}}}status")}


def is_self_presence(room: str):
    def pred(el: etree._Element) -> bool:
        return el.tag == "{jabber:client}presence" and el.get("from", "").startswith(room + "/") and "110" in codes(el)

    return pred


def is_subject(room: str):
    def pred(el: etree._Element) -> bool:
        return (
            el.tag == "{jabber:client}message"
            and el.get("from", "").split("/")[0] == room
            and el.find("{jabber:client}subject") is not None
            and el.find("{jabber:client}body") is None
        )

    return pred


def groupchat(room: str, body: str):
    def pred(el: etree._Element) -> bool:
        return (
            el.tag == "{jabber:client}message"
            and el.get("type") == "groupchat"
            and el.get("from", "").split("/")[0] == room
            and el.findtext("{jabber:client}body") == body
        )

    return pred


def from_occupant(room: str, nick: str, *, ptype: str | None = None):
    def pred(el: etree._Element) -> bool:
        return el.tag == "{jabber:client}presence" and el.get("from") == f"{room}/{nick}" and el.get("type") == ptype

    return pred


async def join(client: Client, room: str, nick: str, *, history: str = "", password: str | None = None,
               pid: str | None = None, timeout: float = 10) -> tuple[int, etree._Element]:
    """Join and wait until the subject arrives (join complete); returns (start index, self-presence)."""
    start = len(client.received)
    pid = pid or f"join-{next(_ids)}"
    secret = f"<password>{password}</password>" if password else ""
    client.send_xml(f"<presence to='{room}/{nick}' id='{pid}'><x xmlns='{MUC}'>{secret}{history}</x></presence>")
    me = await client.wait_for(is_self_presence(room), timeout, start=start)
    await client.wait_for(is_subject(room), timeout, start=start)
    return start, me


async def create_room(owner: Client, room: str, nick: str, *, config: dict[str, str] | None = None) -> None:
    """Join as owner and submit the configuration (Prosody locks new rooms until then)."""
    start = len(owner.received)
    owner.send_xml(f"<presence to='{room}/{nick}'><x xmlns='{MUC}'/></presence>")
    await owner.wait_for(is_self_presence(room), start=start)
    fields = "".join(
        f"<field var='{var}'><value>{value}</value></field>"
        for var, value in {"FORM_TYPE": "http://jabber.org/protocol/muc#roomconfig", **(config or {})}.items()
    )
    iq_id = f"cfg-{next(_ids)}"
    owner.send_xml(
        f"<iq type='set' to='{room}' id='{iq_id}'><query xmlns='{MUC_OWNER}'>"
        f"<x xmlns='jabber:x:data' type='submit'>{fields}</x></query></iq>"
    )
    result = await owner.wait_for(lambda el: el.get("id") == iq_id)
    assert result.get("type") == "result", etree.tostring(result)


def send_groupchat(client: Client, room: str, body: str, *, mid: str | None = None, origin: str | None = None) -> None:
    oid = f"<origin-id xmlns='urn:xmpp:sid:0' id='{origin}'/>" if origin else ""
    idattr = f" id='{mid}'" if mid else ""
    client.send_xml(f"<message to='{room}' type='groupchat'{idattr}><body>{body}</body>{oid}</message>")
