"""The dashboard's navigation: (path, catalogue key, admins only), in menu order.

``/attention`` is also in the menu of the installation's operators, who see the bounce
mail of no org there (``base.html``).

Each area adds its own line; ``base.html`` shows the entries the viewer may open.
"""

from __future__ import annotations

NAV: list[tuple[str, str, bool]] = [
    ("/", "nav.quotas", False),
    ("/analytics", "nav.analytics", False),
    ("/inbox", "nav.mail", False),
    ("/dropbox", "nav.dropbox", False),
    ("/suppressions", "nav.suppressions", False),
    ("/attention", "nav.attention", True),
    ("/campaigns", "nav.campaigns", False),
    ("/syncs", "nav.syncs", False),
]
