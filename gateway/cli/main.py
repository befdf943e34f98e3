"""The ``mailgate`` command line.  Errors are one clear line and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from gateway.cli.consumers import consumer_app
from gateway.config import Settings, load_settings
from gateway.org import admin
from gateway.org.plans import PLAN_NAMES
from storage.db import Database, StorageUnavailable

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="mailgate: email infrastructure for CRMs.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
org_app = typer.Typer(no_args_is_help=True, help="Organizations.")
user_app = typer.Typer(no_args_is_help=True, help="Users, their dropbox and allowed senders.")
app.add_typer(db_app, name="db")
app.add_typer(org_app, name="org")
app.add_typer(user_app, name="user")
inbound_app = typer.Typer(
    no_args_is_help=True,
    help="Mail kept for an operator: held bounces, failed or refused filings.",
)
app.add_typer(inbound_app, name="inbound")


token_app = typer.Typer(
    no_args_is_help=True, help="API tokens: create, list (never shown again) and revoke."
)
app.add_typer(token_app, name="token")

imap_app = typer.Typer(no_args_is_help=True, help="Connected IMAP mailboxes.")
app.add_typer(imap_app, name="imap")
pop_app = typer.Typer(
    no_args_is_help=True, help="Connected POP3 mailboxes (mail stays on the server)."
)
app.add_typer(pop_app, name="pop")
app.add_typer(consumer_app, name="consumer")

_state: dict[str, Any] = {}


@app.callback()
def _main(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with settings.")
    ] = None,
) -> None:
    _state["config"] = config


def settings() -> Settings:
    cfg = _state.get("config")
    if cfg is not None and not cfg.exists():
        fail(f"config file {cfg} not found")
    try:
        return load_settings(cfg)
    except Exception as exc:  # noqa: BLE001 - pydantic/TOML errors become one line
        fail(f"bad configuration: {str(exc).splitlines()[0]}")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def check_list_action(action: str, email: str | None) -> None:
    """``add|remove|list [EMAIL]`` commands: a known action, and an address unless listing."""
    if action not in ("add", "remove", "list"):
        fail("action must be add, remove or list")
    if action != "list" and not email:
        fail(f"`{action}` needs an EMAIL")


def out(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def run_db(fn: Callable[[Database, Settings], Awaitable[T]], *, migrate: bool = False) -> T:
    """Open the database, check it is migrated, run ``fn``; every failure one line."""
    s = settings()

    async def main() -> T:
        db = Database(s.database_url)
        try:
            from storage.migrate import is_current, upgrade

            if migrate:
                await upgrade(db)
            elif not await is_current(db):
                raise admin.AdminError("the database is not migrated: run `mailgate db upgrade`")
            return await fn(db, s)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except admin.AdminError as exc:
        fail(str(exc))
    except (StorageUnavailable, OSError, SQLAlchemyError) as exc:
        fail(
            f"database unavailable ({s.database_url.split('://')[0]}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        )
    raise AssertionError("unreachable")


@app.command()
def serve(
    only: Annotated[
        str | None,
        typer.Option(
            help="Roles to run, comma-separated, any combination of smtp, http, worker, "
            "imap, sync (default: all). Every role is safe in several processes on one "
            "PostgreSQL; smtp and imap need a worker somewhere to file what they receive."
        ),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text|json (default: MAILGATE_LOG_FORMAT, else text).")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="debug|info|warning|error (default: MAILGATE_LOG_LEVEL, else info)."),
    ] = None,
) -> None:
    """Run mailgate (every role by default) in the foreground."""
    from gateway import logs
    from gateway.serve import event_loop_factory, parse_roles, run_until_signal, runners_for

    try:
        roles = parse_roles(only)
    except ValueError as exc:
        fail(str(exc))
    s = settings()
    fmt, level = log_format or s.log_format, log_level or s.log_level
    if fmt not in ("text", "json"):
        fail(f"--log-format must be text or json, not {fmt!r}")
    try:
        logs.level_of(level)
    except ValueError as exc:
        fail(str(exc))
    logs.configure(fmt, level)

    def started(running) -> None:
        if running.smtp_port:
            typer.echo(f"SMTP dropbox + bounces on {s.smtp_host_port[0]}:{running.smtp_port}")
        if running.http_port:
            typer.echo(
                f"HTTP API on http://{s.http_host_port[0]}:{running.http_port} "
                f"(tracking base {s.public_url})"
            )
        if running.ops_port:
            typer.echo(
                f"ops (/healthz /readyz /metrics) on {s.ops_host_port[0]}:{running.ops_port}"
            )
        typer.echo(
            f"roles: {', '.join(sorted(roles))}; runners: {', '.join(runners_for(roles))}; "
            f"database {s.database_url.split('://')[0]}"
        )
        logging.getLogger("mailgate.serve").info(
            "serving %s", ",".join(sorted(roles)), extra={"roles": sorted(roles)}
        )

    async def main() -> None:
        from storage.migrate import upgrade

        db = Database(s.database_url)
        try:
            await upgrade(db)
        finally:
            await db.dispose()
        await run_until_signal(s, roles, started)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(main())
    except OSError as exc:
        fail(f"cannot listen: {exc}")
    except (StorageUnavailable, SQLAlchemyError) as exc:
        fail(f"database unavailable: {type(exc).__name__}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations."""

    async def noop(db: Database, s: Settings) -> None:
        typer.echo("database is up to date")

    run_db(noop, migrate=True)


@org_app.command("create")
def org_create(
    name: str,
    plan: Annotated[str, typer.Option(help="|".join(PLAN_NAMES))],
    timezone: Annotated[str, typer.Option(help="IANA time zone of the org's day.")] = "Asia/Tokyo",
    mass_addon: Annotated[int, typer.Option(help="Extra mass mails per day bought.")] = 0,
    domain: Annotated[
        list[str] | None, typer.Option(help="The org's own mail domain (repeat).")
    ] = None,
    locale: Annotated[str, typer.Option(help="ja or en: name order and page language.")] = "ja",
) -> None:
    """Create an organization; prints JSON with its id."""
    out(
        run_db(
            lambda db, s: admin.create_org(
                db,
                name,
                plan=plan,
                timezone=timezone,
                mass_addon=mass_addon,
                domains=domain or [],
                locale=locale,
            )
        )
    )


@org_app.command("update")
def org_update(
    org: Annotated[str, typer.Argument(help="Org id or name.")],
    plan: Annotated[str | None, typer.Option(help="|".join(PLAN_NAMES))] = None,
    mass_addon: Annotated[
        int | None, typer.Option(help="Extra mass mails per day bought (not on free).")
    ] = None,
) -> None:
    """Change an org's plan or mass add-on; checked as `org create` checks them."""
    if plan is None and mass_addon is None:
        fail("name --plan and/or --mass-addon")
    out(run_db(lambda db, s: admin.update_org(db, org, plan=plan, mass_addon=mass_addon)))


@org_app.command("addresses")
def org_addresses(
    org: Annotated[str, typer.Argument(help="Org id or name.")],
    action: Annotated[str, typer.Argument(help="add|remove|list")],
    email: Annotated[str | None, typer.Argument(help="Address to add or remove.")] = None,
    name: Annotated[str | None, typer.Option(help='Display name, e.g. "サポート窓口".')] = None,
) -> None:
    """Manage the org's shared From addresses (support@ …): 10 per active user."""
    from gateway.org import shared_addresses as addresses

    check_list_action(action, email)
    if action != "add" and name is not None:
        fail("--name only goes with `add`")

    async def go(db: Database, s: Settings) -> dict[str, Any]:
        from storage import orgs

        async with db.connect() as conn:
            found = await orgs.find_org(conn, org)
        if found is None:
            raise admin.AdminError(f"no organization {org!r}")
        try:
            if action == "add":
                await addresses.add(db, found["id"], email, name)
            elif action == "remove":
                await addresses.remove_email(db, found["id"], email or "")
        except addresses.OrgAddressError as exc:
            raise admin.AdminError(exc.message) from exc
        return {"org_id": found["id"], "addresses": await addresses.list_all(db, found["id"])}

    out(run_db(go))


@org_app.command("tracking-skip")
def org_tracking_skip(
    org: Annotated[str, typer.Argument(help="Org id or name.")],
    action: Annotated[str, typer.Argument(help="list|set")],
    domains: Annotated[
        list[str] | None, typer.Argument(help="With `set`: every domain (none clears the list).")
    ] = None,
) -> None:
    """Domains whose links go out untracked (and their subdomains)."""
    from gateway.org import tracking_domains

    if action not in ("list", "set"):
        fail("action must be list or set")
    if action == "list" and domains:
        fail("`list` takes no domains; use `set`")

    async def go(db: Database, s: Settings) -> dict[str, Any]:
        from storage import orgs

        async with db.connect() as conn:
            found = await orgs.find_org(conn, org)
        if found is None:
            raise admin.AdminError(f"no organization {org!r}")
        if action == "set":
            try:
                await tracking_domains.replace(db, found["id"], list(domains or []))
            except tracking_domains.InvalidDomains as exc:
                raise admin.AdminError(str(exc)) from exc
        return {"org_id": found["id"], "domains": await tracking_domains.get(db, found["id"])}

    out(run_db(go))


@user_app.command("create")
def user_create(
    email: str,
    org: Annotated[str, typer.Option(help="Org id or name.")],
    name: Annotated[str, typer.Option(help='Display name, e.g. "山田 太郎" (姓 名).')],
    is_admin: Annotated[bool, typer.Option("--admin", help="Org administrator.")] = False,
    dropbox_setting: Annotated[
        str, typer.Option(help="Unknown recipients become: lead|contact|none.")
    ] = "lead",
) -> None:
    """Create a user; prints JSON with id, api_token and dropbox_address."""
    out(
        run_db(
            lambda db, s: admin.create_user(
                db,
                org,
                email,
                name=name,
                admin=is_admin,
                mail_domain=s.mail_domain,
                dropbox_setting=dropbox_setting,
            )
        )
    )


@user_app.command("dropbox")
def user_dropbox(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    regenerate: Annotated[
        bool, typer.Option(help="New address; the old one stops at once.")
    ] = False,
    vcard: Annotated[Path | None, typer.Option(help="Write a vCard of the address here.")] = None,
    setting: Annotated[
        str | None, typer.Option(help="Unknown recipients become: lead|contact|none.")
    ] = None,
    search: Annotated[
        str | None, typer.Option(help="Match dropbox mail against: leads|contacts|both.")
    ] = None,
) -> None:
    """Show (or regenerate) a user's dropbox address; --setting/--search change its options."""

    async def go(db: Database, s: Settings) -> dict[str, Any]:
        if setting is not None or search is not None:
            async with db.connect() as conn:
                found = await admin.find_user(conn, user)
            if found is None:
                raise admin.AdminError(f"no user {user!r}")
            await admin.set_dropbox_options(
                db, found["org_id"], found["id"], setting=setting, search=search
            )
        return await admin.dropbox(db, user, regenerate=regenerate, mail_domain=s.mail_domain)

    info = run_db(go)
    if vcard is not None:
        try:
            # Bytes: vCard lines end in CRLF on every platform, untranslated.
            vcard.write_bytes(admin.vcard(info["name"], info["dropbox_address"]).encode())
        except OSError as exc:
            fail(f"cannot write {vcard}: {exc.strerror}")
        info["vcard"] = str(vcard)
    out(info)


@user_app.command("senders")
def user_senders(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    action: Annotated[str, typer.Argument(help="add|remove|list")],
    email: Annotated[str | None, typer.Argument(help="Address to add or remove.")] = None,
) -> None:
    """Manage the (at most 5) extra addresses allowed to write to a user's dropbox."""
    check_list_action(action, email)
    out({"senders": run_db(lambda db, s: admin.senders(db, user, action, email))})


@user_app.command("list")
def user_list(org: Annotated[str, typer.Option(help="Org id or name.")]) -> None:
    """The org's users: active or not, since when, their dropbox options."""

    async def go(db: Database, s: Settings) -> list[dict[str, Any]]:
        from storage import orgs

        async with db.connect() as conn:
            found = await orgs.find_org(conn, org)
        if found is None:
            raise admin.AdminError(f"no organization {org!r}")
        return await admin.list_users(db, found["id"])

    out(run_db(go))


@user_app.command("deactivate")
def user_deactivate(user: Annotated[str, typer.Argument(help="User id or email.")]) -> None:
    """Deactivate a user: tokens and dropbox stop, the seat is freed, filed mail stays."""
    from storage.types import utcnow

    out(run_db(lambda db, s: admin.set_active(db, None, user, active=False, now=utcnow())))


@user_app.command("activate")
def user_activate(user: Annotated[str, typer.Argument(help="User id or email.")]) -> None:
    """Reactivate a user, if the org's plan has a free seat."""
    from storage.types import utcnow

    out(run_db(lambda db, s: admin.set_active(db, None, user, active=True, now=utcnow())))


@user_app.command("password")
def user_password(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    password_env: Annotated[
        str, typer.Option(help="Environment variable holding the password (never argv).")
    ],
) -> None:
    """Set a user's dashboard password (Argon2id); their open dashboard sessions end."""
    import os

    password = os.environ.get(password_env)
    if not password:
        fail(f"environment variable {password_env} is not set or empty")
    out(run_db(lambda db, s: admin.set_password(db, None, user, password)))


@app.command("import")
def import_records(
    module: Annotated[str, typer.Argument(help="leads|contacts")],
    file: Annotated[Path, typer.Argument(help="CSV with a header row.")],
    org: Annotated[str, typer.Option(help="Org id or name.")],
) -> None:
    """Import leads or contacts from CSV: every row or none."""
    from gateway.records.csv_import import import_file

    if module not in ("leads", "contacts"):
        fail("module must be leads or contacts")
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    result = run_db(lambda db, s: import_file(db, module, org, data))
    errors = result["errors"]
    if len(errors) == 1:
        fail(f"{file}: {errors[0]}; nothing was imported")
    if errors:
        for line in errors[:200]:
            typer.echo(line, err=True)
        fail(f"{file}: {len(errors)} problems; nothing was imported")
    out({k: v for k, v in result.items() if k != "errors"})


@inbound_app.command("list")
def inbound_list(
    state: Annotated[
        str,
        typer.Option(
            help="held (unrecognised/unattributed bounces), failed (filing broke), "
            "refused (dropbox checks said no after the 250), pending (not yet filed), done"
        ),
    ] = "held",
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
) -> None:
    """List kept messages, oldest first, with why they were kept."""
    from storage import inbound_store

    if state not in ("held", "failed", "refused", "pending", "done"):
        fail("state must be held, failed, refused, pending or done")
    out(
        run_db(
            lambda db, s: db.run_read(inbound_store.list_state, state, max(1, min(limit, 10_000)))
        )
    )


@inbound_app.command("replay")
def inbound_replay(
    inbound_id: Annotated[int, typer.Argument(help="Id from `inbound list`.")],
) -> None:
    """Process a kept message again (after a fix, or once its send exists)."""
    from gateway.ingest.runner import ReplayError, replay_kept

    async def go(db: Database, s: Settings):
        try:
            return await replay_kept(
                db, inbound_id, mail_domain=s.mail_domain, max_records=s.max_records_per_message
            )
        except ReplayError as exc:
            raise admin.AdminError(str(exc)) from exc
        except (StorageUnavailable, OSError, SQLAlchemyError):
            raise  # run_db words these
        except Exception as exc:  # noqa: BLE001 - an operator gets one line, never a traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise admin.AdminError(
                f"replay of message {inbound_id} broke: {type(exc).__name__}: {first}"
            ) from exc

    out(run_db(go))


@app.command()
def quota(
    org: Annotated[str | None, typer.Option(help="Org id or name (default: every org).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Today's sending quota per org: used, limit, remaining, resets-at (the org's day)."""
    from gateway.sending.usage import all_orgs
    from storage.types import utcnow

    rows = run_db(lambda db, s: db.run_read(all_orgs, utcnow(), org))
    if org is not None and not rows:
        fail(f"no organization {org!r}")
    if as_json:
        out(rows if org is None else rows[0])
        return
    typer.echo(f"{'org':<24} {'kind':<10} {'used':>6} {'limit':>6} {'remaining':>9}  resets at")
    for row in rows:
        for kind in ("individual", "mass"):
            q = row[kind]
            typer.echo(
                f"{row['org'][:24]:<24} {kind:<10} {q['used']:>6} {q['limit']:>6} "
                f"{q['remaining']:>9}  {q['resets_at']}"
            )


@imap_app.command("add")
def imap_add(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    host: Annotated[str, typer.Option(help="IMAP server host name.")],
    port: Annotated[int, typer.Option(help="IMAP port (993 for tls, 143 for starttls).")],
    login: Annotated[str, typer.Option(help="Login name on the IMAP server.")],
    password_env: Annotated[
        str, typer.Option(help="Environment variable holding the password (never argv).")
    ],
    security: Annotated[str, typer.Option(help="tls|starttls|none")] = "tls",
    sent_folder: Annotated[
        str | None, typer.Option(help="The Sent folder, when the server flags none.")
    ] = None,
    bounce_mailbox: Annotated[
        bool, typer.Option("--bounce-mailbox", help="Mail here is bounces, not correspondence.")
    ] = False,
    backfill_days: Annotated[int, typer.Option(help="Days fetched on first connection.")] = 30,
) -> None:
    """Connect a mailbox: the login is tried first; the password is stored encrypted."""
    fields = {
        "host": host,
        "port": port,
        "login": login,
        "security": security,
        "sent_folder": sent_folder,
        "bounce": bounce_mailbox,
        "backfill_days": backfill_days,
    }
    out(run_db(_connect_mailbox(user, password_env, fields, "imap")))


def _connect_mailbox(user: str, password_env: str, fields: dict[str, Any], protocol: str):
    """What `imap add` and `pop add` share: the password from its variable, validation,
    a login tried before anything is stored, one clear line for a mailbox already connected.
    """
    import os

    from gateway.receive.mailboxes import InvalidMailbox, MailboxService, mailbox_values

    password = os.environ.get(password_env)
    if not password:
        fail(f"environment variable {password_env} is not set or empty")
    try:
        values = mailbox_values({**fields, "password": password})
    except InvalidMailbox as exc:
        fail(str(exc))
    if protocol != "imap":
        values["protocol"] = protocol

    async def add(db: Database, s: Settings) -> dict[str, Any]:
        from gateway.receive.mailboxes.service import error_words
        from gateway.receive.mailboxes.validate import config_from

        async with db.connect() as conn:
            owner = await admin.find_user(conn, user)
        if owner is None:
            raise admin.AdminError(f"no user {user!r}")
        service = MailboxService(db, None, s)  # type: ignore[arg-type]
        problem = await service.check(config_from(values, password), protocol=protocol)
        if problem is not None:
            raise admin.AdminError(f"cannot connect: {error_words(problem)}")
        try:
            return await service.add(owner["org_id"], owner["id"], values)
        except SQLAlchemyError as exc:
            if "uq_mailboxes" in str(exc) or "UNIQUE" in str(exc):
                raise admin.AdminError("this mailbox is already connected") from exc
            raise

    return add


def _user_mailboxes(db: Database, ref: str):
    async def find() -> list[dict[str, Any]]:
        from storage import mailboxes

        async with db.connect() as conn:
            owner = await admin.find_user(conn, ref)
            if owner is None:
                raise admin.AdminError(f"no user {ref!r}")
            rows = await mailboxes.list_mailboxes(conn, owner["org_id"], owner["id"])
        if not rows:
            raise admin.AdminError(f"user {ref!r} has no connected mailbox (`mailgate imap add`)")
        return rows

    return find()


@imap_app.command("backfill")
def imap_backfill(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    days: Annotated[int, typer.Option(help="How many days back (0: everything).")] = 30,
) -> None:
    """File the last DAYS of INBOX and Sent now, with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gateway.ingest.pipeline import IN_TRANSACTION, with_record_cap
    from gateway.ingest.runner import IngestRunner
    from gateway.ingest.spool import Spool
    from gateway.receive.imap import MailboxError
    from gateway.receive.mailboxes import MailboxService
    from gateway.receive.mailboxes.service import error_words

    if not 0 <= days <= 3650:
        fail("--days must be between 0 and 3650")

    async def backfill(db: Database, s: Settings) -> dict[str, Any]:
        rows = await _user_mailboxes(db, user)
        steps = with_record_cap(IN_TRANSACTION, s.max_records_per_message)
        spool, ingest = Spool(db), IngestRunner(db, mail_domain=s.mail_domain, steps=steps)
        await spool.start()
        await ingest.start()
        service = MailboxService(db, spool, s, ingest=ingest)
        result: dict[str, Any] = {}
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                # stderr: stdout carries only the JSON result, for scripts.
                console=Console(stderr=True),
                transient=False,
            ) as bar:
                ids: dict[str, Any] = {}

                def progress(folder: str, done: int, total: int) -> None:
                    if folder not in ids:
                        ids[folder] = bar.add_task(folder, total=total)
                    bar.update(ids[folder], completed=done, total=total)

                for row in rows:
                    try:
                        count = await service.backfill(row, days, progress)
                    except MailboxError as exc:
                        raise admin.AdminError(f"mailbox {row['id']}: {error_words(exc)}") from exc
                    result[str(row["id"])] = {"fetched": count}
            await ingest.drain()  # what was fetched is filed when the command returns
        finally:
            await ingest.stop()
            await spool.stop()
        return result

    out(run_db(backfill))


@imap_app.command("status")
def imap_status(user: Annotated[str, typer.Argument(help="User id or email.")]) -> None:
    """Each connected mailbox: state, problem in plain words, progress, checkpoints."""
    from gateway.receive.mailboxes import MailboxService

    async def status(db: Database, s: Settings) -> list[dict[str, Any]]:
        service = MailboxService(db, None, s)  # type: ignore[arg-type]
        return [await service.status(r["id"]) for r in await _user_mailboxes(db, user)]

    found = run_db(status)
    out(found)
    for mailbox in found:  # stdout stays JSON for scripts; the warning is for the person
        parked = mailbox["parked"]
        if parked["count"]:
            typer.echo(
                f"warning: mailbox {mailbox['id']}: {parked['count']} message(s) not filed "
                f"({', '.join(sorted({r['stage'] or r['state'] for r in parked['reasons']}))}); "
                f"{parked['replay']}",
                err=True,
            )


@pop_app.command("add")
def pop_add(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    host: Annotated[str, typer.Option(help="POP3 server host name.")],
    port: Annotated[int, typer.Option(help="POP3 port (995 for tls, 110 for starttls).")],
    login: Annotated[str, typer.Option(help="Login name on the POP3 server.")],
    password_env: Annotated[
        str, typer.Option(help="Environment variable holding the password (never argv).")
    ],
    security: Annotated[str, typer.Option(help="tls|starttls|none")] = "tls",
) -> None:
    """Connect a POP3 mailbox: the login is tried first; mail is never deleted from it.

    `mailgate imap status USER` shows it with the user's other mailboxes.
    """
    fields = {"host": host, "port": port, "login": login, "security": security}
    out(run_db(_connect_mailbox(user, password_env, fields, "pop3")))


@app.command()
def demo() -> None:
    """Create (once) a demo organization and user; print a fresh API token and the dropbox.

    Every run revokes the demo user's older tokens: only the one printed last works.
    """
    from gateway.records.csv_import import ensure_demo

    async def go(db: Database, s: Settings) -> dict[str, Any]:
        info = await ensure_demo(db, s)
        await admin.replace_tokens(db, info["user_id"], info["api_token"])
        return info

    out(run_db(go, migrate=True))


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Argument(help="User id or email.")],
    label: Annotated[str, typer.Option(help="What the token is for (shown in listings).")] = "",
) -> None:
    """Issue a new API token for a user; it is printed once and never again."""

    async def go(db: Database, s: Settings) -> dict[str, Any]:
        async with db.connect() as conn:
            found = await admin.find_user(conn, user)
        if found is None:
            raise admin.AdminError(f"no user {user!r}")
        token = await admin.issue_api_token(db, found["id"], label=label or "cli")
        return {"user_id": found["id"], "api_token": token}

    out(run_db(go))


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="One user's tokens (id or email).")] = None,
    org: Annotated[str | None, typer.Option(help="Every token of an org (id or name).")] = None,
) -> None:
    """List API tokens: id, user, hint (first characters), label, created_at."""
    out(run_db(lambda db, s: admin.list_tokens(db, org_ref=org, user_ref=user)))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[
        int | None, typer.Argument(help="The token's id (from `token list`).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="With --all: every token of this user.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Revoke all of --user's tokens.")] = False,
) -> None:
    """Revoke a token (or --user USER --all); requests with it get 401 at once."""
    if (token_id is None) == (user is None) or (user is not None and not all_):
        fail("give a token id, or --user USER --all")
    out(run_db(lambda db, s: admin.revoke_tokens(db, token_id=token_id, user_ref=user)))


def main() -> None:
    # Typer vendors its Click (``typer._click``); the top-level ``click`` is not it.
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    try:
        # Named explicitly: under ``python -m`` or ``-c`` Click would print "Usage: -c".
        # Not standalone, so a bad argument is our one ``error:`` line, not a boxed panel.
        code = app(prog_name="mailgate", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
