"""Connected IMAP and POP3 mailboxes: the service behind `mailgate imap`, `mailgate pop`,
`/api/v1/mailboxes` and the ``imap`` role; sharing rules for who sees whose mail.

Entry points: :class:`MailboxService` (``add``, ``status``, ``check``, ``run``,
``backfill``, ``mark_read``), :class:`MailboxSupervisor` (the ``imap`` role),
:func:`mailbox_values` (input checks), :mod:`gateway.receive.mailboxes.sharing`.
A protocol plugs in through :class:`~gateway.receive.mailboxes.source.MailSource`
(``imap_source``, ``pop3_source``).
"""

from gateway.receive.mailboxes.service import MailboxService, MailboxSupervisor, error_words, public
from gateway.receive.mailboxes.validate import InvalidMailbox, mailbox_values

__all__ = [
    "InvalidMailbox",
    "MailboxService",
    "MailboxSupervisor",
    "error_words",
    "mailbox_values",
    "public",
]
