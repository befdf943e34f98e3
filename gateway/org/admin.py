"""Set-up operations shared by the CLI, ``make run``'s demo and the tests."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.exc import IntegrityError

from gateway.addresses import normalise
from gateway.org import plans
from gateway.receive.smtp import DROPBOX_PREFIX, forget_dropbox
from storage import org_addresses, orgs
from storage.db import Database

MAX_EXTRA_SENDERS = 5
#: What an unknown recipient of dropbox mail becomes (``users.dropbox_setting``).
DROPBOX_SETTINGS = ("lead", "contact", "none")
#: Which records dropbox mail is matched against (``users.dropbox_search``).
DROPBOX_SEARCHES = ("leads", "contacts", "both")


class Refusal(StrEnum):
    """Why a set-up change was refused: the API's error code (and its HTTP status below)."""

    INVALID = "invalid_field"
    NOT_FOUND = "not_found"
    EXISTS = "exists"
    USER_CAP_REACHED = "user_cap_reached"
    LAST_ADMIN = "last_admin"
    TOO_MANY_SENDERS = "too_many_senders"


_STATUS = {
    Refusal.INVALID: 422,
    Refusal.NOT_FOUND: 404,
    Refusal.EXISTS: 409,
    Refusal.USER_CAP_REACHED: 409,
    Refusal.LAST_ADMIN: 409,
    Refusal.TOO_MANY_SENDERS: 422,
}


class AdminError(Exception):
    """A refusal with a message fit for one CLI line or an API error (``code``, ``status``)."""

    def __init__(self, message: str, code: Refusal = Refusal.INVALID) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def status(self) -> int:
        return _STATUS[self.code]


def new_dropbox_token() -> str:
    """130 bits, lower-case base32: unguessable and safe in any mail client."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=").lower()[:26]


def dropbox_address(token: str, mail_domain: str) -> str:
    return f"{DROPBOX_PREFIX}{token}@{mail_domain}"


def new_api_token() -> str:
    return "mg_" + secrets.token_urlsafe(32)


async def create_org(
    db: Database,
    name: str,
    *,
    plan: str,
    timezone: str = "Asia/Tokyo",
    mass_addon: int = 0,
    domains: list[str] | None = None,
    locale: str = "ja",
) -> dict[str, Any]:
    check_plan(plan, mass_addon)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AdminError(f"unknown time zone {timezone!r}") from exc
    clean_domains = []
    for d in domains or []:
        norm = normalise(f"x@{d}")
        if norm is None:
            raise AdminError(f"not a domain: {d!r}")
        clean_domains.append(norm.split("@")[1])
    if not name.strip():
        raise AdminError("organization name is empty")
    try:
        async with db.begin() as conn:
            org_id = await orgs.create_org(
                conn,
                name=name.strip(),
                plan=plan,
                timezone=timezone,
                mass_addon=mass_addon,
                domains=clean_domains,
                locale=locale,
            )
    except IntegrityError as exc:
        raise AdminError(f"an organization named {name!r} already exists") from exc
    return {
        "id": org_id,
        "name": name.strip(),
        "plan": plan,
        "timezone": timezone,
        "mass_addon": mass_addon,
        "domains": clean_domains,
    }


def check_plan(plan: str, mass_addon: int) -> None:
    """A known plan and an add-on it may have (the free plan none): else one clear refusal."""
    try:
        refusal = plans.mass_addon_refusal(plan, mass_addon)
    except plans.UnknownPlan as exc:
        raise AdminError(str(exc)) from None
    if refusal is not None:
        raise AdminError(refusal)


async def update_org(
    db: Database, org_ref: str, *, plan: str | None = None, mass_addon: int | None = None
) -> dict[str, Any]:
    """Change an org's plan and/or mass add-on, checked as ``org create`` checks them.

    Moving an org with an add-on to the free plan is refused too (name
    ``--mass-addon 0`` with it): the free plan has no mass mail.
    """
    async with db.begin() as conn:
        org = await orgs.find_org(conn, org_ref)
        if org is None:
            raise AdminError(f"no organization {org_ref!r}", Refusal.NOT_FOUND)
        new_plan = org["plan"] if plan is None else plan
        new_addon = org["mass_addon"] if mass_addon is None else mass_addon
        check_plan(new_plan, new_addon)
        await orgs.update_org(conn, org["id"], plan=new_plan, mass_addon=new_addon)
    return {"id": org["id"], "name": org["name"], "plan": new_plan, "mass_addon": new_addon}


async def create_user(
    db: Database,
    org_ref: str,
    email: str,
    *,
    name: str,
    admin: bool = False,
    mail_domain: str,
    dropbox_setting: str = "lead",
) -> dict[str, Any]:
    norm = normalise(email)
    if norm is None:
        raise AdminError(f"not an email address: {email!r}")
    if dropbox_setting not in DROPBOX_SETTINGS:
        raise AdminError("dropbox setting must be lead, contact or none")
    token = new_api_token()
    dropbox = new_dropbox_token()
    try:
        async with db.begin() as conn:
            org = await orgs.find_org(conn, org_ref)
            if org is None:
                raise AdminError(f"no organization {org_ref!r}", Refusal.NOT_FOUND)
            # Two creations at once must not both take the last free seat.
            await conn.run_sync(org_addresses.lock_org, org["id"])
            active = await orgs.count_active_users(conn, org["id"])
            if plans.user_cap_reached(org["plan"], active):
                raise AdminError(plans.user_cap_message(org["plan"]), Refusal.USER_CAP_REACHED)
            user_id = await orgs.create_user(
                conn,
                org_id=org["id"],
                email=email.strip(),
                email_norm=norm,
                name=name.strip(),
                is_admin=admin,
                dropbox_token=dropbox,
                dropbox_setting=dropbox_setting,
            )
            await orgs.add_api_token(conn, user_id, token, label="user create")
    except IntegrityError as exc:
        raise AdminError(
            f"a user {email!r} already exists in that organization", Refusal.EXISTS
        ) from exc
    return {
        "id": user_id,
        "org_id": org["id"],
        "email": email.strip(),
        "name": name.strip(),
        "is_admin": admin,
        "api_token": token,
        "dropbox_address": dropbox_address(dropbox, mail_domain),
    }


async def issue_api_token(db: Database, user_id: int, label: str = "") -> str:
    """A new token for the user; shown once, only its hash and hint are kept."""
    token = new_api_token()
    async with db.begin() as conn:
        await orgs.add_api_token(conn, user_id, token, label=label)
    return token


def token_view(row: dict[str, Any]) -> dict[str, Any]:
    """A token as listings show it: which one it is, never what it is."""
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "user_email": row["user_email"],
        "hint": f"{row['hint']}…" if row["hint"] else None,
        "label": row["label"] or None,
        "created_at": row["created_at"],
    }


async def list_tokens(db: Database, *, org_ref: str | None, user_ref: str | None) -> list:
    """Tokens of one user, or of every user of an org (the CLI names one or the other)."""
    async with db.connect() as conn:
        if user_ref is not None:
            user = await _user(conn, user_ref)
            rows = await orgs.list_api_tokens(conn, org_id=user["org_id"], user_id=user["id"])
        elif org_ref is not None:
            org = await orgs.find_org(conn, org_ref)
            if org is None:
                raise AdminError(f"no organization {org_ref!r}")
            rows = await orgs.list_api_tokens(conn, org_id=org["id"])
        else:
            raise AdminError("name --user USER or --org ORG")
    return [token_view(r) for r in rows]


async def revoke_tokens(
    db: Database, *, token_id: int | None = None, user_ref: str | None = None
) -> dict[str, Any]:
    """Revoke one token by id, or every token of a user; it stops working at once."""
    async with db.begin() as conn:
        if token_id is not None:
            row = await orgs.get_api_token(conn, token_id)
            if row is None:
                raise AdminError(f"no API token {token_id}")
            revoked = await orgs.revoke_api_tokens(conn, row["user_id"], token_id=token_id)
            return {"revoked": revoked, "user_id": row["user_id"]}
        if user_ref is None:
            raise AdminError("name a token id, or --user USER --all")
        user = await _user(conn, user_ref)
        return {"revoked": await orgs.revoke_api_tokens(conn, user["id"]), "user_id": user["id"]}


async def replace_tokens(db: Database, user_id: int, token: str) -> int:
    """Revoke every token of the user but ``token`` (``mailgate demo``: one valid token)."""
    async with db.begin() as conn:
        current = await orgs.user_by_api_token(conn, token)
        if current is None or current["id"] != user_id:
            raise AdminError("the new token does not belong to that user")
        return await orgs.revoke_api_tokens(conn, user_id, keep=current["token_id"])


async def find_user(conn, ref: str) -> dict[str, Any] | None:
    """A user by id or by address, compared as the CRM compares addresses."""
    if not ref.isdigit():
        ref = normalise(ref) or ref.strip()
    return await orgs.find_user(conn, ref)


async def _user(conn, ref: str) -> dict[str, Any]:
    user = await find_user(conn, ref)
    if user is None:
        raise AdminError(f"no user {ref!r}")
    return user


async def dropbox(
    db: Database, user_ref: str, *, regenerate: bool, mail_domain: str
) -> dict[str, Any]:
    """The CLI's view of a user's dropbox (``--regenerate``: a new address, the old one refused)."""
    async with db.connect() as conn:
        user = await _user(conn, user_ref)
    if regenerate:
        fresh = await regenerate_dropbox(db, user, mail_domain=mail_domain)
        return {"user_id": user["id"], **fresh}
    return {
        "user_id": user["id"],
        "name": user["name"],
        "email": user["email"],
        "dropbox_address": dropbox_address(user["dropbox_token"], mail_domain),
        "setting": user["dropbox_setting"],
        "search": user["dropbox_search"],
    }


async def regenerate_dropbox(
    db: Database, user: dict[str, Any], *, mail_domain: str
) -> dict[str, Any]:
    """A new dropbox address for ``user``; mail to the old one is refused (550) from now on.

    This process's SMTP receiver forgets the old address at once; another
    process's cache may accept it for up to ``OWNER_CACHE_SECONDS``, and the
    ingest runner then parks that mail as refused: it is never filed.
    """
    token = new_dropbox_token()
    async with db.begin() as conn:
        await orgs.set_dropbox_token(conn, user["id"], token)
    forget_dropbox(user["dropbox_token"])
    return {
        "name": user["name"],
        "email": user["email"],
        "dropbox_address": dropbox_address(token, mail_domain),
        "setting": user["dropbox_setting"],
        "search": user["dropbox_search"],
    }


async def dropbox_view(db: Database, user: dict[str, Any], mail_domain: str) -> dict[str, Any]:
    """What ``GET /api/v1/me/dropbox`` shows: the address, its two settings, allowed senders."""
    async with db.connect() as conn:
        fresh = await orgs.get_org_user(conn, user["org_id"], user["id"])
        if fresh is None:
            raise AdminError("no such user", Refusal.NOT_FOUND)
        senders_now = await orgs.list_senders(conn, user["id"])
    return {
        "address": dropbox_address(fresh["dropbox_token"], mail_domain),
        "setting": fresh["dropbox_setting"],
        "search": fresh["dropbox_search"],
        "allowed_senders": senders_now,
    }


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise AdminError(f"{name} must be one of {', '.join(choices)}")
    return value


async def set_dropbox_options(
    db: Database, org_id: int, user_id: int, *, setting: object = None, search: object = None
) -> dict[str, Any]:
    """Change what an unknown recipient becomes and/or which records dropbox mail is matched
    against; mail filed from now on follows them (the ingest reads the user per batch)."""
    values: dict[str, str] = {}
    if setting is not None:
        values["dropbox_setting"] = _choice(setting, "setting", DROPBOX_SETTINGS)
    if search is not None:
        values["dropbox_search"] = _choice(search, "search", DROPBOX_SEARCHES)
    async with db.begin() as conn:
        user = await orgs.get_org_user(conn, org_id, user_id)
        if user is None:
            raise AdminError("no such user", Refusal.NOT_FOUND)
        if values:
            await orgs.set_dropbox_options(conn, org_id, user_id, **values)
    return {
        "user_id": user_id,
        "setting": values.get("dropbox_setting", user["dropbox_setting"]),
        "search": values.get("dropbox_search", user["dropbox_search"]),
    }


def _vcard_text(value: str) -> str:
    """RFC 6350 §3.4 text escaping; a line break becomes ``\\n`` (it would end the property)."""
    value = value.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;")
    return "\\n".join(value.splitlines())


#: A content line is folded after this many octets (RFC 6350 §3.2, RFC 2425 §5.8.1).
VCARD_LINE_OCTETS = 75


def fold_line(line: str, limit: int = VCARD_LINE_OCTETS) -> str:
    """Fold one content line into CRLF + space continuations of at most ``limit`` octets.

    Counted in UTF-8 octets and cut only between characters, so a multi-byte
    character (a kanji is three octets) is never split across two lines.  A
    continuation's leading space counts toward its ``limit``.
    """
    parts: list[str] = []
    current, size = "", 0
    room = limit
    for ch in line:
        n = len(ch.encode())
        if size + n > room:
            parts.append(current)
            current, size, room = "", 0, limit - 1
        current += ch
        size += n
    parts.append(current)
    return "\r\n ".join(parts)


def vcard(name: str, address: str) -> str:
    """A vCard 3.0 of the dropbox address, so a mail client can autocomplete it as BCC.

    3.0 rather than 4.0: Outlook, Apple Contacts, Thunderbird and Android all
    read it.  Lines end in CRLF and are folded at 75 octets (UTF-8 safe).
    """
    label = _vcard_text(f"{name} (mailgate dropbox)")
    lines = (
        "BEGIN:VCARD",
        "VERSION:3.0",
        f"FN:{label}",
        f"N:{label};;;;",
        f"EMAIL;TYPE=INTERNET:{address}",
        "NOTE:" + _vcard_text("BCC this address to file mail in the CRM"),
        "END:VCARD",
    )
    return "".join(fold_line(line) + "\r\n" for line in lines)


async def senders(db: Database, user_ref: str, action: str, email: str | None) -> list[str]:
    async with db.begin() as conn:
        user = await _user(conn, user_ref)
        current = await orgs.list_senders(conn, user["id"])
        if action == "list":
            return current
        norm = normalise(email or "")
        if norm is None:
            raise AdminError(f"not an email address: {email!r}")
        if action == "add":
            if norm in current or norm == user["email_norm"]:
                return current
            if len(current) >= MAX_EXTRA_SENDERS:
                raise AdminError(
                    f"at most {MAX_EXTRA_SENDERS} extra senders per user; remove one first",
                    Refusal.TOO_MANY_SENDERS,
                )
            await orgs.add_sender(conn, user["id"], norm)
        elif action == "remove":
            if not await orgs.remove_sender(conn, user["id"], norm):
                raise AdminError(f"{email} is not an allowed sender of this user")
        else:
            raise AdminError("action must be add, remove or list")
        result = await orgs.list_senders(conn, user["id"])
    forget_dropbox(user["dropbox_token"])
    return result


async def replace_senders(db: Database, user: dict[str, Any], emails: object) -> list[str]:
    """The user's allowed senders become exactly ``emails`` (at most five, besides their own).

    Their own address is always allowed and is not one of the five.  A removed
    sender is refused at once by this process's SMTP receiver.
    """
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        raise AdminError("senders must be a list of email addresses")
    clean: list[str] = []
    for e in emails:
        norm = normalise(e)
        if norm is None:
            raise AdminError(f"not an email address: {e[:100]!r}")
        if norm != user["email_norm"] and norm not in clean:
            clean.append(norm)
    if len(clean) > MAX_EXTRA_SENDERS:
        raise AdminError(
            f"at most {MAX_EXTRA_SENDERS} allowed senders besides your own address "
            f"({len(clean)} given)",
            Refusal.TOO_MANY_SENDERS,
        )
    async with db.begin() as conn:
        await orgs.replace_senders(conn, user["id"], clean)
        result = await orgs.list_senders(conn, user["id"])
    forget_dropbox(user["dropbox_token"])
    return result


# -- users: listing, deactivation ---------------------------------------------------------


def user_view(row: dict[str, Any]) -> dict[str, Any]:
    """A user as ``GET /api/v1/users`` and the CLI show them (no token, no dropbox address)."""
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "is_admin": bool(row["is_admin"]),
        "active": bool(row["active"]),
        "deactivated_at": row["deactivated_at"].isoformat() if row["deactivated_at"] else None,
        "dropbox_setting": row["dropbox_setting"],
        "dropbox_search": row["dropbox_search"],
        "created_at": row["created_at"].isoformat() if row.get("created_at") else None,
    }


async def list_users(db: Database, org_id: int) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        return [user_view(r) for r in await orgs.list_users(conn, org_id)]


async def _named_user(conn, org_id: int | None, user_ref: str) -> dict[str, Any]:
    """The user ``user_ref`` names: an id or email in any org (``org_id`` None, the CLI),
    or an id within ``org_id`` (the API: another org's id names nobody)."""
    if org_id is None:
        found = await find_user(conn, user_ref)
    elif user_ref.isdigit():
        found = await orgs.get_org_user(conn, org_id, int(user_ref))
    else:
        found = None
    if found is None:
        raise AdminError(f"no user {user_ref!r}", Refusal.NOT_FOUND)
    return found


async def set_active(
    db: Database, org_id: int | None, user_ref: str, *, active: bool, now: datetime
) -> dict[str, Any]:
    """Deactivate or reactivate a user of ``org_id`` (None: any org, for the CLI).

    Deactivated, the user's seat stops counting (individual quota, shared
    addresses, the free plan's four users), their API tokens get 401 and their
    dropbox 550 at once; their filed mail stays theirs, and their mailboxes stop
    polling.  Reactivating needs a free seat; the last active admin stays.
    Decided under the org lock, so two requests cannot both take one seat.
    """
    async with db.connect() as conn:
        found = await _named_user(conn, org_id, user_ref)

    def write(conn) -> dict[str, Any]:
        org_addresses.lock_org(conn, found["org_id"])
        user = orgs.user_for_update(conn, found["id"])
        if user is None:
            raise AdminError(f"no user {user_ref!r}", Refusal.NOT_FOUND)
        if bool(user["active"]) == active:
            return user  # already so: nothing changes, nothing is refused
        if active:
            org = orgs.org_row(conn, user["org_id"])
            if plans.user_cap_reached(org["plan"], orgs.active_users(conn, user["org_id"])):
                raise AdminError(plans.user_cap_message(org["plan"]), Refusal.USER_CAP_REACHED)
        elif user["is_admin"] and orgs.active_admins(conn, user["org_id"]) <= 1:
            raise AdminError(
                "this is the organization's last active admin; make another user admin "
                "(or reactivate one) first",
                Refusal.LAST_ADMIN,
            )
        orgs.set_active(conn, user["org_id"], user["id"], active=active, at=now)
        return orgs.user_for_update(conn, user["id"])

    row = await db.run_write(write)
    if not active:
        forget_dropbox(row["dropbox_token"])
    return user_view(row)


async def set_password(
    db: Database, org_id: int | None, user_ref: str, password: str | None
) -> dict[str, Any]:
    """Set (or, with None, clear) a user's dashboard password; their open sessions end.

    Hashed with Argon2id (``gateway.web.security``); the password itself is
    never stored or logged.  ``org_id`` None: any org (the CLI).
    """
    from gateway.web.security import WeakPassword, hash_password
    from storage import web

    try:
        hashed = hash_password(password) if password is not None else None
    except WeakPassword as exc:
        raise AdminError(str(exc)) from None
    async with db.begin() as conn:
        found = await _named_user(conn, org_id, user_ref)
        await web.set_password(conn, found["id"], hashed)
    return {"id": found["id"], "email": found["email"], "password_set": hashed is not None}
