"""The plan catalogue: every number PRODUCT.md attaches to a plan, in one place.

Org set-up (``mailgate org create``), the daily quotas and the shared-address
limit all read these facts from here, so a plan changes in one table.  Kept
pure: no database, no clock — the callers bring the active-user count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    """What one plan includes per local day and per license (one active user)."""

    name: str
    #: Individual mails per active user per day.
    individual_per_user: int
    #: Mass mails per day included; an add-on may top it up to :data:`MASS_CAP`.
    mass_per_day: int
    #: Active users the plan allows (None: no limit).
    max_users: int | None = None
    #: Whether mass mail may be bought on top (seed 004: the free plan has no mass mail).
    mass_addon_allowed: bool = True


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan(
            "free",
            individual_per_user=50,
            mass_per_day=0,
            max_users=4,
            mass_addon_allowed=False,
        ),
        Plan("standard", individual_per_user=300, mass_per_day=250),
        Plan("professional", individual_per_user=300, mass_per_day=500),
        Plan("enterprise", individual_per_user=300, mass_per_day=1000),
    )
}
PLAN_NAMES = tuple(PLANS)
#: No plan plus add-on sends more mass mail than this per day.
MASS_CAP = 2250
#: Shared From addresses (``support@`` …) per license: one license is one active user.
SHARED_ADDRESSES_PER_LICENSE = 10
#: Quota kinds, in the order reports list them.
QUOTA_KINDS = ("individual", "mass")


class UnknownPlan(ValueError):
    """A plan name outside the catalogue."""


def plan(name: str) -> Plan:
    try:
        return PLANS[name]
    except KeyError:
        raise UnknownPlan(f"unknown plan {name!r}; choose one of {', '.join(PLAN_NAMES)}") from None


def daily_limit(kind: str, plan_name: str, active_users: int, mass_addon: int = 0) -> int:
    """The number of messages of ``kind`` the org may send in one local day.

    An unknown plan sends no mass mail (and the paid individual rate), as it
    always has: a row written before a plan was retired keeps sending 1:1 mail.
    """
    p = PLANS.get(plan_name)
    if kind == "individual":
        if p is not None and p.max_users is not None:
            return p.individual_per_user * min(active_users, p.max_users)
        per_user = p.individual_per_user if p else PLANS["standard"].individual_per_user
        return per_user * active_users
    if kind == "mass":
        # An add-on stored on a plan that allows none (a row edited by hand, a plan
        # changed in SQL) buys nothing: the free plan sends no mass mail, whatever the row says.
        addon = max(mass_addon, 0) if p is None or p.mass_addon_allowed else 0
        return min((p.mass_per_day if p else 0) + addon, MASS_CAP)
    raise ValueError(f"unknown quota kind {kind!r}")


def max_mass_addon(plan_name: str) -> int:
    """The largest add-on that keeps ``plan_name`` within :data:`MASS_CAP` (0: none allowed)."""
    p = plan(plan_name)
    return MASS_CAP - p.mass_per_day if p.mass_addon_allowed else 0


def mass_addon_refusal(plan_name: str, mass_addon: int) -> str | None:
    """Why ``mass_addon`` extra mass mails a day cannot go with ``plan_name``; None when they can.

    The one check every way of setting an add-on runs (``org create``, ``org update``):
    negative, on a plan without mass mail (free), or past :data:`MASS_CAP`.
    Raises :class:`UnknownPlan` for a plan outside the catalogue.
    """
    p = plan(plan_name)
    if mass_addon < 0:
        return "--mass-addon cannot be negative"
    if mass_addon and not p.mass_addon_allowed:
        return (
            f"the {plan_name} plan has no mass mail, so no mass add-on can be bought for it; "
            "choose a paid plan (standard, professional, enterprise) first"
        )
    if p.mass_per_day + mass_addon > MASS_CAP:
        return (
            f"--mass-addon {mass_addon} takes the {plan_name} plan over {MASS_CAP} "
            f"mass mails a day; at most {max_mass_addon(plan_name)}"
        )
    return None


def shared_address_limit(active_users: int) -> int:
    return SHARED_ADDRESSES_PER_LICENSE * active_users


def user_cap_reached(plan_name: str, active_users: int) -> bool:
    """True when the plan allows no further active user."""
    cap = plan(plan_name).max_users
    return cap is not None and active_users >= cap


def user_cap_message(plan_name: str) -> str:
    """The refusal when :func:`user_cap_reached`: deactivating a user frees a seat."""
    cap = plan(plan_name).max_users
    return (
        f"the {plan_name} plan allows at most {cap} active users; "
        "deactivate one (mailgate user deactivate) or change plan first"
    )
