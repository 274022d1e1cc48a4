"""XEP-0050 ad-hoc commands with XEP-0004 forms: the requests, and the answers the
bouncer writes. Pure.

Every command the bouncer offers takes at most one form: ``execute`` without values
gets the form (status ``executing``), a submit (``execute`` or ``complete`` with the
form) gets the outcome (status ``completed``). The form carries everything the next
step needs, so nothing is kept between the steps; the ``sessionid`` is echoed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from bouncer.xmpp import ids, ns, stanza
from bouncer.xmpp.ns import q

Element = etree._Element


@dataclass(frozen=True)
class Request:
    node: str
    action: str  # execute, complete, next, prev, cancel
    sessionid: str
    values: dict[str, str]  # a submitted form's single values


@dataclass(frozen=True)
class Field:
    var: str
    type: str  # text-single, text-multi, list-single, fixed, hidden
    label: str = ""
    values: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()  # (label, value) of a list-single
    required: bool = False


@dataclass(frozen=True)
class Form:
    title: str
    fields: tuple[Field, ...] = field(default=())
    instructions: str = ""


def request(iq: Element) -> Request | None:
    """The command an IQ set asks for; None: not a command request."""
    command = stanza.find(iq, ns.COMMANDS, "command")
    if iq.get("type") != "set" or command is None or not command.get("node"):
        return None
    x = command.find(q(ns.DATA, "x"))
    values = {}
    if x is not None and x.get("type") == "submit":
        for f in x.findall(q(ns.DATA, "field")):
            value = f.findtext(q(ns.DATA, "value"))
            if f.get("var") and value is not None:
                values[f.get("var")] = value.strip()
    return Request(command.get("node", ""), command.get("action", "execute"),
                   command.get("sessionid") or ids.new("cmd"), values)


def is_listing(iq: Element) -> bool:
    """A disco#items query for the command list (XEP-0050 §2.2)."""
    query = stanza.find(iq, ns.DISCO_ITEMS, "query")
    return iq.get("type") == "get" and query is not None and query.get("node") == ns.COMMANDS


def add_items(result: Element, owner: str, commands: list[tuple[str, str]]) -> Element:
    """The command list with ours (node, name) added to what the result already lists."""
    query = stanza.find(result, ns.DISCO_ITEMS, "query")
    if query is None:
        query = stanza.child(result, ns.DISCO_ITEMS, "query", node=ns.COMMANDS)
    for node, name in commands:
        etree.SubElement(query, q(ns.DISCO_ITEMS, "item"), jid=owner, node=node, name=name)
    return result


def ask(iq: Element, req: Request, form: Form) -> Element:
    """The form a command needs filled in."""
    reply, command = _reply(iq, req, "executing")
    actions = etree.SubElement(command, q(ns.COMMANDS, "actions"), execute="complete")
    etree.SubElement(actions, q(ns.COMMANDS, "complete"))
    command.append(_form(form, "form"))
    return reply


def completed(iq: Element, req: Request, result: Form | None, note: str, failed: bool = False) -> Element:
    """The outcome: a result form (what the command shows) and a note."""
    reply, command = _reply(iq, req, "completed")
    etree.SubElement(command, q(ns.COMMANDS, "note"), type="error" if failed else "info").text = note
    if result is not None:
        command.append(_form(result, "result"))
    return reply


def canceled(iq: Element, req: Request) -> Element:
    return _reply(iq, req, "canceled")[0]


def _reply(iq: Element, req: Request, status: str) -> tuple[Element, Element]:
    reply = stanza.iq_result(iq)
    command = stanza.child(reply, ns.COMMANDS, "command", node=req.node, sessionid=req.sessionid, status=status)
    return reply, command


def _form(form: Form, kind: str) -> Element:
    x = etree.Element(q(ns.DATA, "x"), type=kind, nsmap={None: ns.DATA})
    etree.SubElement(x, q(ns.DATA, "title")).text = form.title
    if form.instructions:
        etree.SubElement(x, q(ns.DATA, "instructions")).text = form.instructions
    for f in form.fields:
        el = etree.SubElement(x, q(ns.DATA, "field"), type=f.type)
        if f.var:
            el.set("var", f.var)
        if f.label:
            el.set("label", f.label)
        if f.required:
            etree.SubElement(el, q(ns.DATA, "required"))
        for value in f.values:  # XEP-0004's order: values, then options
            etree.SubElement(el, q(ns.DATA, "value")).text = value
        for label, value in f.options:
            option = etree.SubElement(el, q(ns.DATA, "option"), label=label)
            etree.SubElement(option, q(ns.DATA, "value")).text = value
    return x
