"""The XMPP layer both roles share: parser, stanzas, JIDs, namespaces, ids, XEP-0198."""
