"""Translate the hosted CRM's ``${Leads.Last Name}`` merge fields into Jinja.

Users bring templates from their old CRM; translating them before compiling
lets those templates work unchanged.  The translation only ever emits
``{{ object.field }}`` for a field found in the label table below, so a label
cannot smuggle code into the template: anything unknown (``${Leads.__class__}``)
is refused with its line number instead of being passed through.

Labels follow the hosted CRM's English field labels (``Last Name``,
``Account Name``, ``Designation``) and its Japanese UI (見込み客 / 連絡先 /
商談 / 取引先 tabs; 姓, 名, 会社名 …), compared case- and space-insensitively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PERSON = {
    "first name": "first_name",
    "名": "first_name",
    "last name": "last_name",
    "姓": "last_name",
    "full name": "full_name",
    "name": "full_name",
    "氏名": "full_name",
    "email": "email",
    "e-mail": "email",
    "メール": "email",
    "メールアドレス": "email",
    "phone": "phone",
    "電話": "phone",
    "電話番号": "phone",
    "mobile": "mobile",
    "携帯電話": "mobile",
    "title": "title",
    "designation": "title",
    "役職": "title",
}

_LEAD = {
    **_PERSON,
    "company": "company",
    "会社名": "company",
    "website": "website",
    "web サイト": "website",
    "webサイト": "website",
    "city": "city",
    "市区町村": "city",
    "state": "state",
    "都道府県": "state",
    "country": "country",
    "国": "country",
    "lead source": "lead_source",
    "リードソース": "lead_source",
    "見込み客のソース": "lead_source",
}

_ACCOUNT = {
    "account name": "name",
    "取引先名": "name",
    "name": "name",
    "phone": "phone",
    "電話": "phone",
    "website": "website",
    "webサイト": "website",
    "industry": "industry",
    "業種": "industry",
    "billing city": "city",
    "city": "city",
    "billing state": "state",
    "state": "state",
    "billing country": "country",
    "country": "country",
}

_CONTACT = {
    **_PERSON,
    "department": "department",
    "部署": "department",
    "account name": "account.name",
    "取引先名": "account.name",
}

_DEAL = {
    "deal name": "name",
    "potential name": "name",
    "商談名": "name",
    "name": "name",
    "stage": "stage",
    "ステージ": "stage",
    "amount": "amount",
    "金額": "amount",
    "closing date": "closing_date",
    "完了予定日": "closing_date",
    "account name": "account.name",
    "取引先名": "account.name",
    "contact name": "contact.full_name",
    "連絡先名": "contact.full_name",
}

_USER = {
    "name": "name",
    "名前": "name",
    "ユーザー名": "name",
    "full name": "full_name",
    "氏名": "full_name",
    "first name": "first_name",
    "名": "first_name",
    "last name": "last_name",
    "姓": "last_name",
    "email": "email",
    "メール": "email",
    "メールアドレス": "email",
    "phone": "phone",
    "電話": "phone",
    "title": "title",
    "役職": "title",
    "signature": "signature",
    "署名": "signature",
}

_ORG = {
    "name": "name",
    "company name": "name",
    "organization name": "name",
    "組織名": "name",
    "会社名": "name",
    "email": "email",
    "メール": "email",
    "phone": "phone",
    "電話": "phone",
    "website": "website",
    "webサイト": "website",
    "address": "address",
    "住所": "address",
}

#: Hosted-CRM module label -> (our template object, its label table).
_MODULE_LABELS: dict[str, tuple[str, dict[str, str]]] = {
    "leads": ("lead", _LEAD),
    "見込み客": ("lead", _LEAD),
    "contacts": ("contact", _CONTACT),
    "連絡先": ("contact", _CONTACT),
    "deals": ("deal", _DEAL),
    "potentials": ("deal", _DEAL),
    "商談": ("deal", _DEAL),
    "accounts": ("account", _ACCOUNT),
    "取引先": ("account", _ACCOUNT),
    "users": ("user", _USER),
    "user": ("user", _USER),
    "ユーザー": ("user", _USER),
    "organization": ("org", _ORG),
    "org": ("org", _ORG),
    "組織": ("org", _ORG),
}

# ${Module.Field Label}: no braces or newlines inside, so a field can never
# span lines (line numbers stay those of the original source).
_MERGE = re.compile(r"\$\{([^{}\n]*)\}")


@dataclass(frozen=True)
class UnknownLabel(Exception):
    """A ``${…}`` merge field the label table does not know."""

    field: str
    line: int

    def __str__(self) -> str:
        return f"unknown merge field {self.field} on line {self.line}"


def _key(label: str) -> str:
    return " ".join(label.split()).casefold()


def field_path(label: str) -> str | None:
    """``"Leads.Last Name"`` -> ``"lead.last_name"``, or None when unknown."""
    module, dot, field = label.partition(".")
    if not dot:
        return None
    entry = _MODULE_LABELS.get(_key(module))
    if entry is None:
        return None
    obj, table = entry
    attr = table.get(_key(field))
    return f"{obj}.{attr}" if attr else None


def translate(source: str) -> str:
    """Rewrite every ``${Module.Field}`` in ``source`` as ``{{ object.field }}``.

    Raises :class:`UnknownLabel` for the first field it cannot map.
    """
    if "${" not in source:
        return source

    def replace(match: re.Match[str]) -> str:
        path = field_path(match.group(1))
        if path is None:
            line = source.count("\n", 0, match.start()) + 1
            raise UnknownLabel(match.group(0), line)
        return "{{ " + path + " }}"

    return _MERGE.sub(replace, source)
