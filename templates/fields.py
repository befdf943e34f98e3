"""The merge-field catalogue: which names a template of each module may use.

One table serves three jobs, so they can never disagree: save-time validation
(an unknown field is refused with its name), context building (only catalogued
keys of a record reach a template, so nothing else can leak into a mail) and the
hosted-CRM label translation in :mod:`templates.crm_syntax`.

A field is either a leaf (a string) or a nested object (another ``Fields``
mapping), e.g. ``contact.account.name``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

Fields = Mapping[str, Union[None, "Fields"]]

#: Leaves whose value is computed by :func:`templates.render.build_context`
#: (from first/last name and the org locale), never read from the record.
DERIVED = frozenset({"full_name"})

ACCOUNT: Fields = {
    "name": None,
    "phone": None,
    "website": None,
    "industry": None,
    "city": None,
    "state": None,
    "country": None,
}

_PERSON: Fields = {
    "first_name": None,
    "last_name": None,
    "full_name": None,
    "email": None,
    "phone": None,
    "mobile": None,
    "title": None,
}

LEAD: Fields = {
    **_PERSON,
    "company": None,
    "website": None,
    "city": None,
    "state": None,
    "country": None,
    "lead_source": None,
}

CONTACT: Fields = {
    **_PERSON,
    "department": None,
    "account": ACCOUNT,
}

DEAL: Fields = {
    "name": None,
    "stage": None,
    "amount": None,
    "closing_date": None,
    "account": ACCOUNT,
    # The deal's contact without its own account: the deal already has one.
    "contact": {k: v for k, v in CONTACT.items() if k != "account"},
}

USER: Fields = {
    "name": None,
    "first_name": None,
    "last_name": None,
    "full_name": None,
    "email": None,
    "phone": None,
    "title": None,
    "signature": None,
}

ORG: Fields = {
    "name": None,
    "email": None,
    "phone": None,
    "website": None,
    "address": None,
}

#: Template module -> (the record's name in templates, its fields).
MODULES: Mapping[str, tuple[str, Fields]] = {
    "leads": ("lead", LEAD),
    "contacts": ("contact", CONTACT),
    "deals": ("deal", DEAL),
    "accounts": ("account", ACCOUNT),
}

#: Names every template may use whatever its module.
COMMON: Mapping[str, Fields | None] = {
    "user": USER,
    "org": ORG,
    # Filled by the sender per recipient (mass mail footers need it).
    "unsubscribe_url": None,
}


def normalise_module(module: str) -> str:
    """Accept ``Leads``/``leads``: the API and the hosted CRM spell it both ways."""
    key = module.strip().lower()
    if key not in MODULES:
        raise ValueError(f"unknown template module {module!r}; expected one of {sorted(MODULES)}")
    return key


def top_level(module: str) -> dict[str, Fields | None]:
    """The names a template of ``module`` may reference at the top level."""
    name, fields = MODULES[normalise_module(module)]
    return {name: fields, **COMMON}


def lookup(module: str, path: tuple[str, ...]) -> bool:
    """Whether the dotted ``path`` (``("contact", "account", "name")``) exists."""
    node: Fields | None = top_level(module)
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
