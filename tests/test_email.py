"""The email channel through the real router, against a real SMTP server (aiosmtpd)."""

import asyncio
import datetime
import email
import email.policy
import ipaddress
import shutil
import socket
import ssl
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from router_email import EmailConfig

from tests.conftest import ROOT, ServiceFactory, StoreDB, example
from tests.test_delivery import deliveries, first_state, until

# aiosmtpd warns when AUTH is allowed without TLS: on 127.0.0.1 that is what we test.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

PASSWORD = "s3cret-Pa55word"
TEXT_TEMPLATE = """\
{% block title %}{{ body.user.name }} completed {{ body.course.name }}{% endblock %}
{% block text %}
{{ body.user.name }} completed {{ body.course.name }}.
{% endblock %}
"""
HTML_TEMPLATE = (
    TEXT_TEMPLATE
    + """\
{% block html %}
<p><b>{{ body.user.name }}</b> completed {{ body.course.name }}.</p>
{% endblock %}
"""
)


@dataclass
class Received:
    """One accepted mail: the envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


@dataclass
class Mailbox:
    """aiosmtpd handler that records what arrives; ``rcpt``/``data`` script refusals."""

    received: list[Received] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    data_script: list[str] = field(default_factory=list)
    rcpts: int = 0
    datas: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, _: Any):
        self.rcpts += 1
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.datas += 1
        if self.data_script:
            return self.data_script.pop(0)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        login = session.auth_data.login if session.authenticated else None
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), message, tls, login)  # type: ignore[arg-type]
        )
        return "250 Message accepted for delivery"


@pytest.fixture(autouse=True)
def templates(tmp_path: Path) -> Path:
    """The service's templates: text only, independent of the repo's templates/."""
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "default.j2").write_text("{{ event_name }}\n")
    (directory / "course_completed.j2").write_text(TEXT_TEMPLATE)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any):
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"router",
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=data)


SmtpFactory = Callable[..., tuple[Mailbox, Controller]]


@pytest.fixture
def smtp() -> Iterator[SmtpFactory]:
    """``smtp(port=None, start=True, **aiosmtpd_options)`` -> (mailbox, controller)."""
    controllers: list[Controller] = []

    def make(port: int | None = None, start: bool = True, **options: Any):
        mailbox = Mailbox()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port or free_port(), **options)
        controllers.append(controller)
        if start:
            controller.start()
        return mailbox, controller

    yield make
    for controller in controllers:
        if getattr(controller, "_thread", None) is not None:
            controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (its PEM path, a server context)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return cert_file, context


def email_rules(port: int, extra: str = "", to: str = '"{{ body.user.email }}"') -> str:
    """Every event to one ``type: email`` channel on 127.0.0.1:``port``, plus ``extra``
    channel settings (YAML lines)."""
    return (
        "version: 1\nchannels:\n  mail:\n    type: email\n"
        f'    host: "127.0.0.1"\n    port: {port}\n    timeout: 5\n'
        f'    sender: "Canvas Router <router@example.edu>"\n    to: {to}\n'
        + textwrap.indent(textwrap.dedent(extra), "    ")
        + "\nrules:\n  - {name: everything, events: ['*'], notify: [mail]}\n"
    )


def with_email(name: str, address: str) -> dict[str, Any]:
    event = example(name)
    event["body"]["user"]["email"] = address
    return event


async def test_mail_headers_envelope_and_parts(
    service: ServiceFactory, smtp: SmtpFactory, tmp_path: Path, store_db: StoreDB
) -> None:
    mailbox, controller = smtp()
    (tmp_path / "templates" / "course_completed.email.j2").write_text(HTML_TEMPLATE)
    extra = """\
        cc: "Registrar <registrar@example.edu>"
        bcc: [audit@example.edu, "{{ metadata.user_login }}"]
        reply_to: help@example.edu
        """
    client = await service(email_rules(controller.port, extra))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: len(mailbox.received) == 1)
    [got] = mailbox.received
    mail = got.message
    await until(lambda: first_state(store_db) == "delivered")
    [row] = deliveries(store_db)

    assert got.mail_from == "router@example.edu"
    # Bcc reaches the envelope only; the templated bcc repeats `to`, sent once.
    assert got.rcpt_tos == ["inewton@example.com", "registrar@example.edu", "audit@example.edu"]
    assert "Bcc" not in mail and b"audit@" not in mail.as_bytes()
    assert mail["From"] == "Canvas Router <router@example.edu>"
    assert mail["To"] == "inewton@example.com"
    assert mail["Cc"] == "Registrar <registrar@example.edu>"
    assert mail["Reply-To"] == "help@example.edu"
    assert mail["Subject"] == "Isaac Newton completed Computer Science I"
    assert mail["X-Router-Delivery"] == row["key"]
    assert row["key"].endswith(":everything:mail")
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["Message-ID"].startswith("<") and mail["Message-ID"].endswith("@example.edu>")
    sent = parsedate_to_datetime(mail["Date"])
    assert abs((datetime.datetime.now(datetime.UTC) - sent).total_seconds()) < 60
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == "Isaac Newton completed Computer Science I."
    assert html.get_content().strip() == (
        "<p><b>Isaac Newton</b> completed Computer Science I.</p>"
    )
    assert row["attempts"] == 1 and not got.tls and got.login is None


async def test_auth_and_templated_subject(
    service: ServiceFactory, smtp: SmtpFactory, tmp_path: Path
) -> None:
    mailbox, controller = smtp(
        authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    extra = f"""\
        username: router
        password: "{PASSWORD}"
        subject: "[{{{{ metadata.context_type }}}}] {{{{ body.course.name }}}}"
        """
    client = await service(email_rules(controller.port, extra))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: len(mailbox.received) == 1)
    [got] = mailbox.received
    assert got.login == b"router"
    assert got.message["Subject"] == "[Course] Computer Science I"
    # No html block in the default templates: a text-only mail.
    assert got.message.get_content_type() == "text/plain"
    assert got.message.get_content().strip() == "Isaac Newton completed Computer Science I."


async def test_an_event_without_its_own_template_is_a_text_and_html_mail(
    service: ServiceFactory, smtp: SmtpFactory, tmp_path: Path
) -> None:
    mailbox, controller = smtp()
    for name in ("default.j2", "default.email.j2"):  # the shipped fallbacks
        (tmp_path / "templates" / name).write_text((ROOT / "templates" / name).read_text())
    for folder in ("events", "layouts"):  # what the fallbacks extend and import
        shutil.copytree(ROOT / "templates" / folder, tmp_path / "templates" / folder)
    client = await service(email_rules(controller.port, to="registrar@example.edu"))
    event = example("course_created")
    event["metadata"]["event_name"] = "widget_spun"  # no template of its own anywhere
    await client.post("/events", json=event)
    await until(lambda: len(mailbox.received) == 1)
    [got] = mailbox.received
    assert got.message["Subject"] == "Canvas event: widget spun"
    assert got.message.get_content_type() == "multipart/alternative"
    text, html = got.message.get_body(("plain",)), got.message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().startswith("Canvas event widget_spun ")
    assert "<h2" in html.get_content() and "widget spun" in html.get_content()


async def test_wrong_password_is_a_dead_letter_with_535(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB
) -> None:
    mailbox, controller = smtp(
        authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    extra = """\
        username: router
        password: "wrong-Pa55word"
        """
    client = await service(email_rules(controller.port, extra))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1
    assert row["last_error"].startswith("SMTPAuthenticationError: SMTP 535")
    assert "wrong-Pa55word" not in row["last_error"]
    assert mailbox.received == []


@pytest.mark.parametrize(
    ("mode", "trust"),
    [("starttls", "ca_file"), ("starttls", "validate_certs: false"), ("tls", "ca_file")],
)
async def test_tls(
    service: ServiceFactory,
    smtp: SmtpFactory,
    certificate: tuple[Path, ssl.SSLContext],
    mode: str,
    trust: str,
) -> None:
    cert_file, server_context = certificate
    if mode == "tls":  # implicit TLS (SMTPS)
        mailbox, controller = smtp(ssl_context=server_context)
    else:
        mailbox, controller = smtp(tls_context=server_context, require_starttls=True)
    trust_line = f'ca_file: "{cert_file}"' if trust == "ca_file" else trust
    client = await service(email_rules(controller.port, f"{mode}: true\n{trust_line}\n"))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: len(mailbox.received) == 1)
    assert mailbox.received[0].tls


async def test_untrusted_certificate_is_retried(
    service: ServiceFactory,
    smtp: SmtpFactory,
    store_db: StoreDB,
    certificate: tuple[Path, ssl.SSLContext],
) -> None:
    mailbox, controller = smtp(tls_context=certificate[1], require_starttls=True)
    extra = """\
        starttls: true
        max_attempts: 2
        """
    client = await service(email_rules(controller.port, extra))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 2
    assert "certificate verify failed" in row["last_error"]
    assert mailbox.received == []


async def test_server_down_then_up_is_retried_until_delivered(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB
) -> None:
    port = free_port()
    mailbox, controller = smtp(port=port, start=False)
    client = await service(email_rules(port, "max_attempts: 100"))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: (deliveries(store_db) or [{"attempts": 0}])[0]["attempts"] >= 2)
    assert deliveries(store_db)[0]["last_error"].startswith("SMTPConnectError: ")
    await asyncio.to_thread(controller.start)
    await until(lambda: first_state(store_db) == "delivered")
    assert len(mailbox.received) == 1
    assert mailbox.received[0].rcpt_tos == ["inewton@example.com"]


async def test_550_on_rcpt_is_a_dead_letter_naming_the_address(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB
) -> None:
    mailbox, controller = smtp()
    mailbox.refuse_rcpt["inewton@example.com"] = "550 5.1.1 no such user"
    client = await service(email_rules(controller.port))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1
    assert row["last_error"] == (
        "SMTPRecipientsRefused: inewton@example.com: SMTP 550 5.1.1 no such user"
    )
    assert mailbox.datas == 0


async def test_some_recipients_refused_is_delivered_to_the_others(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB, caplog: pytest.LogCaptureFixture
) -> None:
    mailbox, controller = smtp()
    mailbox.refuse_rcpt["inewton@example.com"] = "550 5.1.1 no such user"
    client = await service(email_rules(controller.port, "cc: registrar@example.edu"))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    assert [got.rcpt_tos for got in mailbox.received] == [["registrar@example.edu"]]
    [record] = [r for r in caplog.records if r.getMessage() == "some recipients refused"]
    assert record.error == "inewton@example.com: SMTP 550 5.1.1 no such user"  # type: ignore[attr-defined]


async def test_451_on_data_is_retried(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB
) -> None:
    mailbox, controller = smtp()
    mailbox.data_script.extend(["451 4.3.0 try later", "451 4.3.0 try later"])
    client = await service(email_rules(controller.port))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [row] = deliveries(store_db)
    assert row["attempts"] == 3 and mailbox.datas == 3
    assert len(mailbox.received) == 1


@pytest.mark.parametrize(
    "address", ["not an address\r\nBcc: x@evil.example", "a@example.com, x@evil.example", "nobody"]
)
async def test_bad_recipient_from_the_event_is_a_dead_letter(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB, address: str
) -> None:
    mailbox, controller = smtp()
    client = await service(email_rules(controller.port))
    await client.post("/events", json=with_email("course_completed", address))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1
    assert row["last_error"] == f"invalid to address {address!r}"
    assert mailbox.rcpts == 0 and mailbox.received == []


async def test_missing_event_field_is_a_dead_letter_naming_the_field(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB
) -> None:
    _, controller = smtp()
    client = await service(email_rules(controller.port, to='"{{ body.user.mail }}"'))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"].startswith("cannot render to: UndefinedError:")


async def test_empty_host_is_log_only(
    service: ServiceFactory, store_db: StoreDB, caplog: pytest.LogCaptureFixture
) -> None:
    client = await service(email_rules(25).replace('host: "127.0.0.1"', 'host: ""'))
    caplog.set_level("INFO")
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")
    [record] = [r for r in caplog.records if r.getMessage() == "log-only channel: would send"]
    assert record.reason == "no SMTP host configured"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"tls": True, "starttls": True}, "mutually exclusive"),
        ({"sender": "router"}, "invalid address"),
        ({"to": "a@x.org\nBcc: b@y.org"}, "invalid address"),
        ({"to": "{{ body.user.email"}, "template syntax error"),
        ({"to": []}, "at least one of to, cc or bcc"),
        ({"username": "router"}, "username and password must be set together"),
        ({"ca": "not a certificate"}, "not a PEM CA certificate bundle"),
    ],
)
def test_config_errors(settings: dict[str, Any], error: str) -> None:
    base = {"host": "smtp.example.edu", "sender": "router@example.edu", "to": "a@example.edu"}
    with pytest.raises(ValidationError, match=error):
        EmailConfig.model_validate({**base, **settings})
    assert EmailConfig.model_validate({**base, "host": ""}).to == ["a@example.edu"]


async def test_an_address_template_over_its_limits_is_a_dead_letter(
    service: ServiceFactory, smtp: SmtpFactory, store_db: StoreDB
) -> None:
    # Issue 18: the email channel's own templates are bounded too (they render on the
    # event loop), and nothing in them is evaluated when the rules file loads.
    mailbox, controller = smtp()
    client = await service(
        email_rules(controller.port, to="\"{{ 'x' * 1000000000 }}@example.edu\"")
    )
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"].startswith("cannot render to: LimitExceeded: a repeated sequence")
    assert "render_max_output (100000)" in row["last_error"]
    assert mailbox.received == []
