"""Which folders to poll: INBOX, and the Sent folder whatever it is called.

Sent is "Sent", "Sent Items", "[Gmail]/Sent Mail", "Gesendet" … so we ask the
server for the folder flagged ``\\Sent`` (RFC 6154 SPECIAL-USE) and let the
account override it when the server flags nothing or flags the wrong one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.receive.imap.client import ImapSession
from gateway.receive.imap.utf7 import decode_modified_utf7

_LIST = re.compile(
    rb'^(?:LIST )?\((?P<flags>[^)]*)\) (?P<sep>NIL|"(?:[^"\\]|\\.)*") (?P<name>.*)$', re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Folder:
    name: str
    flags: frozenset[str]

    @property
    def selectable(self) -> bool:
        return not ({"\\NOSELECT", "\\NONEXISTENT"} & {f.upper() for f in self.flags})


def parse_list_line(line: bytes) -> Folder | None:
    """One ``LIST`` answer line (aioimaplib strips the ``LIST`` word); None for other lines."""
    m = _LIST.match(line)
    if not m:
        return None
    flags = frozenset(m.group("flags").decode("ascii", "replace").split())
    return Folder(name=_astring(m.group("name").strip()), flags=flags)


def find_sent(folders: list[Folder], override: str | None = None) -> str | None:
    """The account's Sent folder: the override, else the one flagged ``\\Sent``."""
    if override:
        return override
    for folder in folders:
        if folder.selectable and any(f.upper() == "\\SENT" for f in folder.flags):
            return folder.name
    # Servers without SPECIAL-USE: the names mail clients create, first match wins.
    by_name = {folder.name.casefold(): folder.name for folder in folders if folder.selectable}
    for candidate in _SENT_NAMES:
        if candidate in by_name:
            return by_name[candidate]
    return None


_SENT_NAMES = ("sent", "sent items", "sent messages", "sent mail", "inbox.sent", "inbox/sent")


async def discover_folders(session: ImapSession, sent_override: str | None = None) -> list[str]:
    """Folders to poll, INBOX first.  One LIST round trip (none with an override)."""
    if sent_override:
        return ["INBOX", sent_override]
    if session.has_capability("SPECIAL-USE") or session.has_capability("LIST-EXTENDED"):
        lines = await session.list_folders('""', '"*"', "RETURN", "(SPECIAL-USE)")
    else:
        lines = await session.list_folders('""', '"*"')
    folders = [f for f in map(parse_list_line, lines) if f is not None]
    sent = find_sent(folders)
    names = ["INBOX"]
    if sent is not None and sent.upper() != "INBOX":
        names.append(sent)
    return names


def _astring(raw: bytes) -> str:
    """A mailbox name as sent in LIST: atom or quoted string (modified UTF-7 decoded)."""
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    text = raw.decode("utf-8", "replace")
    return decode_modified_utf7(text)
