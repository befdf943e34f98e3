"""Connected IMAP mailboxes: the service behind `mailgate imap`, `/api/v1/mailboxes`
and the ``imap`` role; sharing rules for who sees whose mail.

Entry points: :class:`MailboxService` (``add``, ``status``, ``check``, ``run``,
``backfill``, ``mark_read``), :class:`MailboxSupervisor` (the ``imap`` role),
:func:`mailbox_values` (input checks), :mod:`gateway.receive.mailboxes.sharing`.
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
