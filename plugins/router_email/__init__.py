"""The built-in ``email`` channel: send the rendered message over SMTP with aiosmtplib.

Written exactly as a third-party plugin would be: it registers through the
``router`` entry-point group and uses only the public ``router`` API.
"""

import functools
import logging
import re
import ssl
from collections.abc import Callable
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Annotated, Any

import aiosmtplib
import jinja2
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from router import (
    BoundedSandbox,
    Channel,
    ChannelConfig,
    DeliveryError,
    Message,
    PermanentError,
    RenderLimits,
    RetryableError,
    bounded,
    hookimpl,
)

__version__ = "0.1.0"

log = logging.getLogger(__name__)

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_ADDRESS = re.compile(rf'(?P<bare>{_SPEC})|(?:"[^"\\]*"|[^"<>@,;:\\]*?)\s*<(?P<spec>{_SPEC})>')
# Addresses and subjects are rendered in send(), on the event loop: small limits keep a
# careless template from holding it (and the bounded sandbox folds no constants when a
# config is validated).
_ENV = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_LIMITS = RenderLimits(timeout=0.1, max_output=100_000)
_compile = functools.lru_cache(maxsize=512)(_ENV.from_string)


def parse_address(raw: str) -> Address:
    """One ASCII mailbox, ``a@b.c`` or ``Name <a@b.c>``; ``ValueError`` on anything else
    (a second address, control characters such as CR/LF, a missing local part or domain)."""
    text = raw.strip()
    match = _ADDRESS.fullmatch(text)
    if match is None or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValueError(f"invalid address {raw!r}")
    spec = match["bare"] or match["spec"]
    name, parsed = parseaddr(text)
    if parsed != spec:  # the stdlib must read the same mailbox, or we refuse it
        raise ValueError(f"invalid address {raw!r}")
    return Address(display_name=name, addr_spec=spec)


def _templated(value: str) -> bool:
    return any(mark in value for mark in ("{{", "{%", "{#"))


def _check(value: str, *, address: bool = True) -> str:
    """Config-time check: compile a template, else parse a literal address."""
    if _templated(value):
        try:
            _compile(value)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error: {exc.message}") from None
    elif address and value.strip():
        parse_address(value)
    return value


def _literal(value: str) -> str:
    parse_address(value)
    return value


Mailbox = Annotated[str, AfterValidator(_check)]
Mailboxes = Annotated[list[Mailbox], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
Subject = Annotated[str, AfterValidator(functools.partial(_check, address=False))]


class EmailConfig(ChannelConfig):
    """Settings of a ``type: email`` channel. ``to``, ``cc``, ``bcc``, ``reply_to`` and
    ``subject`` may be Jinja templates over ``event``, ``metadata`` and ``body``, and
    ``recipient`` on a rule with ``recipients:`` (``to: "{{ recipient.email }}"``)."""

    host: str = Field("", description="SMTP server; empty means log what would be sent")
    port: int | None = Field(None, ge=1, le=65535, description="default 465/587/25 by TLS mode")
    starttls: bool = Field(False, description="require STARTTLS; never tried otherwise")
    tls: bool = Field(False, description="implicit TLS from the first byte (SMTPS)")
    username: str | None = None
    password: SecretStr | None = None
    validate_certs: bool = True
    ca: str | None = Field(None, description="PEM CA bundle to trust; write `ca_file: PATH`")
    connect_timeout: float = Field(10.0, gt=0, le=600, description="seconds per connect/command")
    sender: Annotated[str, AfterValidator(_literal)]
    to: Mailboxes = Field(default_factory=list)
    cc: Mailboxes = Field(default_factory=list)
    bcc: Mailboxes = Field(default_factory=list, description="envelope only, never a header")
    reply_to: Mailbox | None = None
    subject: Subject | None = Field(None, description="default: the title, else the event name")

    @field_validator("ca")
    @classmethod
    def _ca(cls, value: str | None) -> str | None:
        if value:
            try:
                ssl.create_default_context(cadata=value)
            except (ssl.SSLError, ValueError):
                raise ValueError("not a PEM CA certificate bundle") from None
        return value or None

    @model_validator(mode="after")
    def _combination(self) -> "EmailConfig":
        if self.tls and self.starttls:
            raise ValueError("tls (implicit TLS) and starttls are mutually exclusive")
        if bool(self.username) != bool(self.password and self.password.get_secret_value()):
            raise ValueError("username and password must be set together")
        if not (self.to or self.cc or self.bcc):
            raise ValueError("at least one of to, cc or bcc is required")
        return self


class EmailChannel(Channel):
    """Sends one multipart (text + HTML) mail per message over a fresh SMTP connection."""

    type = "email"
    Config = EmailConfig
    config: EmailConfig

    def log_only_reason(self) -> str | None:
        return None if self.config.host.strip() else "no SMTP host configured"

    async def open(self) -> None:
        self._sender = parse_address(self.config.sender)
        ca, verify = self.config.ca, self.config.validate_certs
        self._tls = ssl.create_default_context(cadata=ca) if ca and verify else None

    def _render(self, field: str, source: str, context: dict[str, Any]) -> str:
        if not _templated(source):
            return source
        try:
            with bounded(_LIMITS):
                return _compile(source).render(context)
        except Exception as exc:
            raise PermanentError(f"cannot render {field}: {type(exc).__name__}: {exc}") from None

    def _mailboxes(self, field: str, sources: list[str], context: dict[str, Any]) -> list[Address]:
        found = []
        for text in (self._render(field, source, context) for source in sources):
            if text.strip():  # a template may render empty to mean "nobody"
                try:
                    found.append(parse_address(text))
                except ValueError:
                    raise PermanentError(f"invalid {field} address {text!r}") from None
        return found

    def build(self, message: Message) -> tuple[EmailMessage, list[str]]:
        """The MIME message and the envelope recipients (To + Cc + Bcc, deduplicated)."""
        event = message.event
        context = {
            "event": event,
            "metadata": event.get("metadata") or {},
            "body": event.get("body") or {},
            "event_id": message.event_id,
            "event_name": message.event_name,
            "rule": message.rule,
            "channel": message.channel,
            "recipient": message.recipient,
        }
        cfg = self.config
        person = message.recipient
        if person is not None and not person.get("email"):
            if any("recipient" in s for s in (*cfg.to, *cfg.cc, *cfg.bcc)):
                raise PermanentError(
                    f"recipient {person.get('name') or '(no name)'} (Canvas user"
                    f" {person.get('id')}) has no email address the token may see"
                )
        to, cc, bcc = (self._mailboxes(f, getattr(cfg, f), context) for f in ("to", "cc", "bcc"))
        envelope = list(dict.fromkeys(box.addr_spec for box in (*to, *cc, *bcc)))
        if not envelope:
            raise PermanentError("no recipients: to, cc and bcc all rendered empty")
        subject = message.title or message.event_name
        if cfg.subject:
            subject = self._render("subject", cfg.subject, context)
        mail = EmailMessage()
        mail["From"] = self._sender
        if to:
            mail["To"] = to
        if cc:
            mail["Cc"] = cc
        if reply_to := self._mailboxes("reply_to", [cfg.reply_to] if cfg.reply_to else [], context):
            mail["Reply-To"] = reply_to
        mail["Subject"] = " ".join(subject.split())  # no CR/LF from a title or template
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain=self._sender.domain)
        mail["X-Router-Delivery"] = message.key
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(message.text or subject)
        if html := message.blocks.get("html"):
            mail.add_alternative(html, subtype="html")
        return mail, envelope

    async def send(self, message: Message) -> None:
        mail, recipients = self.build(message)
        cfg = self.config
        try:
            refused, _ = await aiosmtplib.send(
                mail,
                sender=self._sender.addr_spec,
                recipients=recipients,
                hostname=cfg.host.strip(),
                port=cfg.port,
                use_tls=cfg.tls,
                start_tls=cfg.starttls,
                validate_certs=cfg.validate_certs,
                tls_context=self._tls,
                timeout=cfg.connect_timeout,
                username=cfg.username or None,
                password=cfg.password.get_secret_value() if cfg.password else None,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self.error(exc) from None
        if refused:  # the others have it: a retry would mail them twice
            detail = "; ".join(f"{rcpt}: SMTP {r.code} {r.message}" for rcpt, r in refused.items())
            log.warning("some recipients refused", extra={"key": message.key, "error": detail})

    def error(self, exc: Exception) -> DeliveryError:
        """Map an aiosmtplib/network failure: 4xx and connection trouble retry, 5xx fail."""
        temporary = True
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            text = "; ".join(f"{r.recipient}: SMTP {r.code} {r.message}" for r in exc.recipients)
            temporary = all(400 <= r.code < 500 for r in exc.recipients)
        elif isinstance(exc, aiosmtplib.SMTPResponseException):
            text = f"SMTP {exc.code} {exc.message}"
            temporary = not 500 <= exc.code < 600
        else:
            text = str(exc)
            temporary = not isinstance(exc, aiosmtplib.SMTPNotSupported)
        text = f"{type(exc).__name__}: {text}"
        if self.config.password and (secret := self.config.password.get_secret_value()):
            text = text.replace(secret, "***")
        return RetryableError(text) if temporary else PermanentError(text)


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``email`` channel type."""
    register(EmailChannel)
