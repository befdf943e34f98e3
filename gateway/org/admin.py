"""Set-up operations shared by the CLI, ``make run``'s demo and the tests."""

from __future__ import annotations

import base64
import secrets
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.exc import IntegrityError

from gateway.addresses import normalise
from gateway.org import plans
from gateway.receive.smtp import DROPBOX_PREFIX
from storage import orgs
from storage.db import Database

MAX_EXTRA_SENDERS = 5


class AdminError(Exception):
    """A refusal with a message fit for one CLI line or an API error."""


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
    try:
        included = plans.plan(plan).mass_per_day
    except plans.UnknownPlan as exc:
        raise AdminError(str(exc)) from None
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AdminError(f"unknown time zone {timezone!r}") from exc
    if mass_addon < 0:
        raise AdminError("--mass-addon cannot be negative")
    if included + mass_addon > plans.MASS_CAP:
        raise AdminError(
            f"--mass-addon {mass_addon} takes the {plan} plan over {plans.MASS_CAP} "
            f"mass mails a day; at most {plans.max_mass_addon(plan)}"
        )
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
    if dropbox_setting not in ("lead", "contact", "none"):
        raise AdminError("dropbox setting must be lead, contact or none")
    token = new_api_token()
    dropbox = new_dropbox_token()
    try:
        async with db.begin() as conn:
            org = await orgs.find_org(conn, org_ref)
            if org is None:
                raise AdminError(f"no organization {org_ref!r}")
            active = await orgs.count_active_users(conn, org["id"])
            if plans.user_cap_reached(org["plan"], active):
                cap = plans.plan(org["plan"]).max_users
                raise AdminError(f"the {org['plan']} plan allows at most {cap} users")
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
        raise AdminError(f"a user {email!r} already exists in that organization") from exc
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
    async with db.begin() as conn:
        user = await _user(conn, user_ref)
        token = user["dropbox_token"]
        if regenerate:
            token = new_dropbox_token()
            await orgs.set_dropbox_token(conn, user["id"], token)
    return {
        "user_id": user["id"],
        "name": user["name"],
        "email": user["email"],
        "dropbox_address": dropbox_address(token, mail_domain),
    }


def vcard(name: str, address: str) -> str:
    """A vCard 3.0 for the user's address book, so the client can autocomplete it as BCC."""
    esc = name.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;")
    esc = " ".join(esc.splitlines())  # a line break in a name would end the property
    return (
        "BEGIN:VCARD\r\nVERSION:3.0\r\n"
        f"FN:{esc} (mailgate dropbox)\r\nN:;{esc} (mailgate dropbox);;;\r\n"
        f"EMAIL;TYPE=INTERNET:{address}\r\nNOTE:BCC this address to file mail in the CRM\r\n"
        "END:VCARD\r\n"
    )


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
                    f"at most {MAX_EXTRA_SENDERS} extra senders per user; remove one first"
                )
            await orgs.add_sender(conn, user["id"], norm)
        elif action == "remove":
            if not await orgs.remove_sender(conn, user["id"], norm):
                raise AdminError(f"{email} is not an allowed sender of this user")
        else:
            raise AdminError("action must be add, remove or list")
        return await orgs.list_senders(conn, user["id"])
