"""Why a delivery failed, and whether that makes the address hard-bounced.

Our severity policy is about the *address*, because that is what a hard
bounce suppresses: only failures that prove the mailbox or domain does not
exist (unknown user, unknown host, moved, domain accepting no mail) are hard.
Everything else -- full mailbox, blocked by reputation, spam filters, policy,
timeouts -- is soft even under a 5xx code, since the same address may accept
mail later or from a cleaner sender.  This matches what the reference parser
(sisimai) decides and what large senders do in practice; a 5.x.x code alone
is not enough (mailbox full 5.2.2 is the classic counter-example).

Phrase tables are checked before status codes because remote MTAs routinely
send a generic or wrong code (``550 5.1.1`` for a disabled account) while the
text says what really happened.
"""

from __future__ import annotations

import re

from gateway.bounces.report import Severity

HARD_REASONS = frozenset({"user_unknown", "host_unknown", "has_moved"})

STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
REPLY_RE = re.compile(r"(?<![\d.\-:/])([245][0-5]\d)(?=[ \-]|$)(?![\-:]\d)", re.M)

# (reason, pattern) in priority order: the first match wins.
_PHRASES: list[tuple[str, re.Pattern[str]]] = [
    (reason, re.compile(pattern, re.I))
    for reason, pattern in [
        (
            "mailbox_full",
            r"mailbox (is |was )?full|mailbox.{0,20}(over|exceed\w*).{0,10}(quota|limit)|"
            r"over ?quota|quota (exceeded|exceeds|full)|exceed\w* (the )?(storage|quota)|"
            r"storage (allocation|quota)|out of storage|insufficient (system )?storage|"
            r"user.{0,20}(has exhausted|is over|has reached).{0,30}(quota|storage|limit)|"
            r"mailbox size limit|mail ?box (has )?exceeded|mailbox exceeds|disk quota|"
            r"mail ?folder is full|"
            r"full mailbox|inbox is full|not enough (disk )?space|"
            r"メールボックスが一杯|容量(が|を)?(超|オーバー|不足|一杯)",
        ),
        (
            "message_too_big",
            r"message (size )?(is )?too (big|large)|message.{0,20}exceeds.{0,30}(size|limit)|"
            r"size (limit )?exceeded|exceeds (the )?(maximum|fixed) .{0,20}size|"
            r"message length exceeds|mail size (limit|too)|line limit exceeded|line too long",
        ),
        (
            "suspended",
            r"(account|mailbox|address|user).{0,60}(is |has been )?"
            r"(disabled|suspended|deactivated|inactive|expired|locked|frozen)\b|"
            r"(disabled|suspended|inactive|deactivated) (recipient |account|mailbox|user)|"
            r"not (an )?active|mailbox unavailable.{0,20}(inactive|disabled)|"
            r"利用(停止|を停止)",
        ),
        ("virus", r"virus|malware|infected"),
        (
            "sender_rejected",
            r"sender (address )?(rejected|refused|denied|blocked)|"
            r"domain of sender address .{0,80} does not exist|unroutable sender|"
            r"from: domain is invalid|provide a valid from|"
            r"not have permission to post|not (allowed|authorized) to post",
        ),
        ("filtered", r"due to recipient preferences|domain filter"),
        (
            "too_many_connections",
            r"too many (connections|concurrent|sessions|recipients)|sent to too many|rate limit",
        ),
        (
            "mailer_error",
            r"procmail|couldn't create|mailer error|command died|pipe to |"
            r"unknown mailer",
        ),
        ("blocked", r"bad dns ptr|ptr resource record|invalid ip for sending"),
        (
            "not_accept",
            r"no smtp service|null mx|does not accept (e-?mail|mail)|accepts no mail",
        ),
        (
            "has_moved",
            r"address has (changed|moved)|has moved|no longer (valid|in use|available|used)|"
            r"moved (to|permanently)",
        ),
        (
            "network_error",
            r"host not found, try again|unexpected name server reply|temporary dns|"
            r"host not reachable|unable to connect|did not accept our requests to connect",
        ),
        (
            "host_unknown",
            r"host (or domain name )?(unknown|not found)|unknown host|"
            r"domain (name )?(not found|does not exist|doesn't exist|is not valid|unknown)|"
            r"no such domain|unrouteable mail domain|unknown domain|name or service not known|"
            r"illegal host/domain|domain.{0,20}(has no|no) (mx|mail exchanger|valid)|"
            r"no (valid )?mx (record|host)|dns (lookup )?(failure|error).{0,30}(domain|host)|"
            r"host not found|unrouteable domain|domain is not reachable|invalid domain$|"
            r"couldn't find a mail exchanger|couldn't find any host|"
            r"(?m:^\s*\d{3}\s+[a-z0-9-]+(\.[a-z0-9-]+)+\s+does not exist)|"
            r"mail for .{0,60} loops back to myself|"
            r"ドメイン(名)?が(存在しない|見つから)",
        ),
        (
            "user_unknown",
            r"user (is )?unknown|unknown (user|recipient|local[- ]part|address|mailbox|alias)|"
            r"no such (user|mailbox|recipient|address|account|person|local user)|"
            r"(user|mailbox|recipient|address|account|addressee)s?"
            r" .{0,40}(does not|doesn't|did not|not) exist|"
            r"(user|mailbox|recipient|address|account) (is )?(not|wasn't) (found|known|listed)|"
            r"not (a )?(valid|known) (mailbox|user|recipient|address)|"
            r"invalid (recipient|mailbox|address|user)|recipient (address )?(is )?invalid|"
            r"(mailbox|recipient|user) not found|no mailbox|mailbox unavailable|"
            r"unrouteable address|bad (destination|recipient) (mailbox )?address|"
            r"recipient (address )?rejected: (user|undeliverable|access denied|unknown)|"
            r"undeliverable address|addressee unknown|not our customer|"
            r"no longer (a )?user|unknown or illegal alias|"
            r"user not (found|listed)|recipient unknown|invalid.{0,10}address|"
            r"couldn't be found|could not be found|unable to find|"
            r"mailbox (name )?(not|is not) (allowed|found)|"
            r"this (user|recipient) doesn't have|no account|does not have an account|"
            r"not listed in (domino|public)|ディレクトリ(の)?リストにありません|"
            r"user doesn't have a|存在しない|宛先(が)?不明|"
            r"recipient name is not recognized|check if (the )?address is correct|"
            r"recipnotfound|invalid final delivery userid|"
            r"recipient address rejected\.?\s*$|見つかりません|"
            r"該当するユーザ|ユーザ(ー)?(が|は)?(存在|見つかり)",
        ),
        (
            "expired",
            r"retry time(out)? (not reached|exceeded)|message expired|expired|"
            r"(could|couldn't|was|has) not been delivered.{0,30}(days|hours)|"
            r"delivery time ?out|too long in (the )?queue|"
            r"(undeliverable|undelivered).{0,20}for .{0,10}(days|hours)|"
            r"giving up(?! on [\d\[])|(?<!i've )given up|timeout exceeded|maximum time|"
            r"in the queue too long|"
            r"failed \d+ attempts|aborted after .{0,10}hour|failing for a long time",
        ),
        (
            "spam",
            r"spam|junk mail|unsolicited|bulk mail|looks like (a )?spam|"
            r"content.{0,20}rejected|迷惑メール",
        ),
        (
            "blocked",
            r"blocked|block ?list|black ?list|listed (at|in|on|by)|spamhaus|\brbl\b|dnsbl|"
            r"reputation|client host .{0,60}rejected|access denied|not allowed to send|"
            r"connection (refused|rejected)|ip .{0,40} (rejected|denied|banned)|banned|"
            r"ptr record|reverse (dns|lookup)|poor reputation",
        ),
        (
            "no_relaying",
            r"relay(ing)? (access )?(denied|not permitted|prohibited)|not permitted to relay",
        ),
        (
            "filtered",
            r"filter|refused by|rejected by (the )?(recipient|user)|"
            r"receiving refused|拒否|受信(を)?拒否",
        ),
        (
            "security_error",
            r"authentication (required|failed)|unauthenticated|without authentication|"
            r"\bspf\b|\bdkim\b|dmarc|tls (is )?required",
        ),
        ("policy", r"policy|not accepted|rejected for policy|protocol violation"),
        (
            "syntax_error",
            r"syntax error|command (parameter )?not (implemented|recognized)|"
            r"unrecognized command|malformed address|bad sequence of commands",
        ),
        ("content_error", r"improper use of 8-bit|8-?bit data|header error"),
        ("network_error", r"network|connection (timed out|lost|reset)|no route to host"),
        (
            "system_error",
            r"system error|internal error|local error|temporar\w+ (local )?(problem|failure)|"
            r"transaction failed|service (currently )?unavailable",
        ),
        ("rejected", r"rejected|refused|denied"),
    ]
]

# RFC 3463 subject.detail → reason, for when the text says nothing useful.
_STATUS_REASONS = {
    "1.0": "user_unknown",
    "1.1": "user_unknown",
    "1.2": "host_unknown",
    "1.3": "user_unknown",
    "1.4": "user_unknown",
    "1.6": "has_moved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.10": "not_accept",
    "2.1": "suspended",
    "2.2": "mailbox_full",
    "2.3": "message_too_big",
    "2.4": "system_error",
    "3.0": "system_error",
    "3.1": "system_full",
    "3.2": "system_error",
    "3.3": "system_error",
    "3.4": "message_too_big",
    "3.5": "system_error",
    "4.0": "network_error",
    "4.1": "network_error",
    "4.2": "network_error",
    "4.3": "network_error",
    "4.4": "host_unknown",
    "4.5": "system_error",
    "4.6": "network_error",
    "4.7": "expired",
    "5.0": "syntax_error",
    "5.3": "too_many_connections",
    "6.0": "content_error",
    "7.0": "security_error",
    "7.1": "blocked",
    "7.26": "security_error",
}


def first_status(text: str) -> str:
    """The first RFC 3463 enhanced status code in ``text``, or ``""``."""
    match = STATUS_RE.search(text or "")
    return ".".join(match.groups()) if match else ""


def first_reply_code(text: str) -> str:
    match = REPLY_RE.search(text or "")
    return match.group(1) if match else ""


def reason_from_text(text: str) -> str:
    """The first phrase that names a reason, in the text or in it with its lines joined
    (MTAs wrap their explanations anywhere: ``Host not found,\n try again``)."""
    if not text:
        return ""
    joined = " ".join(text.split())
    for reason, pattern in _PHRASES:
        if pattern.search(text) or pattern.search(joined):
            return reason
    return ""


# RFC 3463 subject → reason, for a detail the table does not know (``5.7.6``, ``5.4.14``).
_SUBJECT_REASONS = {
    "3": "system_error",
    "4": "network_error",
    "5": "syntax_error",
    "6": "content_error",
    "7": "security_error",
}


def reason_from_status(status: str) -> str:
    if not status or status.count(".") != 2:
        return ""
    _, subject, detail = status.split(".")
    found = _STATUS_REASONS.get(f"{subject}.{detail}", "")
    if not found and detail != "0":
        found = _SUBJECT_REASONS.get(subject, "")
    return found


#: A final report that says its failure is permanent, in the words MTAs use
#: (sendmail's "permanent fatal errors", qmail's and Exim's "This is a permanent
#: error", Gmail's "failed permanently", Lotus' and others' "PERMANENT").
_PERMANENT_RE = re.compile(
    r"permanent(ly)? (fatal )?(error|failure|fail)|fail(ed|ure)? permanently|"
    r"permanent fatal errors|\bPERMANENT\b|unrecoverable error|"
    r"will not (be )?(retry|retried|try again)|not going to try again",
    re.I,
)
_UNDELIVERED_RE = re.compile(r"could not be delivered|couldn't be delivered|undeliverable", re.I)


def says_permanent(text: str) -> bool:
    """True when the report says the failure is final and permanent.

    "Could not be delivered" alone is said of temporary failures too; with a
    5xx reply in the transcript it is permanent.
    """
    if not text:
        return False
    joined = " ".join(text.split())
    if _PERMANENT_RE.search(joined):
        return True
    return bool(_UNDELIVERED_RE.search(joined) and first_reply_code(text).startswith("5"))


_COMMAND_RE = re.compile(
    r"(?:in reply to|after|response to|during|while|error in)\s+(?:the\s+)?"
    r"(rcpt(?: to)?|mail(?: from)?|end of data|data|connect|initial connection|greeting)|"
    r"^\s*>>>\s*(rcpt|mail|data)\b|"
    r"smtp:(rcpt|mail|data)\b|for (text) command|\[(rcpt|"
    r"mail|data)_?(?:to|from)?\]|most progress was (rcpt|mail)|"
    r"does not like (recipient)|(rcpt) to:<[^>]*>\s*\n?\s*<<<|smtp command:?\s*(rcpt|mail|data)\b",
    re.I | re.M,
)


_SENDMAIL_RCPT_RE = re.compile(r"(?m)^[45]\d\d [45]\.1\.\d+ <[^>]+@[^>]+>\.\.\. ")
_CARRIER_FILTER_RE = re.compile(r"\b550[ :]+:\s*user unknown", re.I)


def smtp_command(text: str) -> str:
    """The SMTP command a failure was answered to (RCPT, MAIL, DATA), if the text says."""
    command = ""
    for match in _COMMAND_RE.finditer(text or ""):
        word = next(g for g in match.groups() if g).split()[0].upper()
        command = {
            "END": "DATA",
            "TEXT": "DATA",
            "RECIPIENT": "RCPT",
            "INITIAL": "CONNECT",
            "GREETING": "CONNECT",
        }.get(word, word)
    return command


_GENERIC_REASONS = frozenset({"rejected", "policy", "system_error"})


def decide(
    status: str, reply_code: str, *evidences: str, permanent: bool = False
) -> tuple[str, Severity]:
    """Reason slug and severity for one failed recipient.

    ``evidences`` go from the most to the least specific text (the
    recipient's own diagnostic, the lines around it, the whole report); the
    first that names a reason decides, so a phrase elsewhere in a long
    report cannot override what was said about this recipient.
    ``permanent``: the report says the failure is final (its own words,
    :func:`says_permanent`, or flufl.bounce's verdict for a format it knows).

    "User unknown" is believed unless the failure came after ``DATA``: an
    MTA that accepted the recipient at ``RCPT TO`` and then refuses the
    content is filtering, whatever words it uses.  KDDI/au's domain filter
    answers "550 : User unknown" (an empty address) to senders a subscriber
    blocked; the subscriber exists, so that is a soft ``filtered``.  A
    refusal in reply to ``MAIL FROM`` or at connection time is about us, the
    sender, never about the recipient's address.
    """
    specific = reason_from_status(status)
    if specific == "rejected":
        return specific, "soft"  # X.1.7/X.1.8: our sender address was refused, not theirs
    reason = ""
    for evidence in evidences:
        reason = reason_from_text(evidence)
        if reason:
            break
    if reason in _GENERIC_REASONS and specific in HARD_REASONS | {"mailbox_full", "suspended"}:
        reason = specific
    everything = "\n".join(evidences)
    command = smtp_command(everything)
    # An X.1.x code said about this recipient (its diagnostic or its own report
    # line: sendmail prints "550 5.1.1 <addr>... User unknown" for a pipelined RCPT)
    # corroborates the unknown user whatever command the transcript shows last.
    own_lines = "\n".join(evidences[:2])
    corroborated = status.startswith(("5.1.", "4.1.")) or bool(_SENDMAIL_RCPT_RE.search(own_lines))
    if reason == "user_unknown" and not corroborated:
        if command == "DATA" or _CARRIER_FILTER_RE.search(everything):
            reason = "filtered"
    if command in _SESSION_REFUSALS and reason in HARD_REASONS | _GENERIC_REASONS | {""}:
        reason = _SESSION_REFUSALS[command]
    if not reason:
        reason = specific or "undefined"
    return reason, severity(reason, status, reply_code, permanent=permanent)


#: A refusal at these stages is about our session or sender address.
_SESSION_REFUSALS = {"MAIL": "rejected", "CONNECT": "blocked"}


def code_class(status: str, reply_code: str) -> str:
    """``"5"``, ``"4"`` or ``""``: the SMTP reply the remote server gave decides over a
    missing or odd ``Status:`` (the reporting MTA's summary of it)."""
    for code in (reply_code, status):
        if code[:1] in ("4", "5"):
            return code[:1]
    return ""


def severity(
    reason: str, status: str = "", reply_code: str = "", *, permanent: bool = False
) -> Severity:
    """Hard only for a bad address, or for a permanent failure nothing explains.

    A reason transient by nature (mailbox full, suspended, expired, blocked …)
    is soft whatever the code: repeated, it suppresses all the same.  An
    ``undefined`` failure is hard when a 5xx said so or the report calls it
    permanent, soft otherwise.
    """
    code = code_class(status, reply_code)
    if reason in HARD_REASONS or reason == "not_accept":
        # A temporary code for an unknown user (greylisting MTAs do this) stays soft.
        return "soft" if code == "4" else "hard"
    if reason == "undefined":
        return "hard" if code == "5" or (permanent and code != "4") else "soft"
    return "soft"
