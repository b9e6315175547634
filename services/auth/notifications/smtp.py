"""Sending an e-mail through the configured SMTP relay (``RECLO_AUTH__SMTP_*``), as plain
text. aiosmtplib keeps it on the event loop: a slow relay costs a waiting coroutine, not a
worker thread that password hashing also needs."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

import aiosmtplib

from services.auth.notifications.errors import DeliveryError
from shared.settings import AuthSettings


class Mailer:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host)

    def message(self, to: str, subject: str, body: str, *, delivery_id: str) -> EmailMessage:
        s = self.settings
        message = EmailMessage()
        message["From"] = s.smtp_from
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        domain = parseaddr(s.smtp_from)[1].rpartition("@")[2] or "reclo.invalid"
        message["Message-ID"] = make_msgid(idstring=delivery_id, domain=domain)
        # Mail robots should not answer a notification (RFC 3834).
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body)
        return message

    async def send(self, to: str, subject: str, body: str, *, delivery_id: str) -> None:
        s = self.settings
        if not self.configured:
            raise DeliveryError("this server has no SMTP relay configured", permanent=True)
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        try:
            await aiosmtplib.send(
                self.message(to, subject, body, delivery_id=delivery_id),
                hostname=s.smtp_host, port=s.smtp_port,
                username=s.smtp_username, password=password,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=s.notify_smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            raise DeliveryError(f"the mail server refused the address: {refused}") from None
        except aiosmtplib.SMTPTimeoutError:
            raise DeliveryError(
                f"the mail server did not answer within {s.notify_smtp_timeout_seconds:g} s"
            ) from None
        except aiosmtplib.SMTPException as exc:
            raise DeliveryError(f"the mail server said: {exc}") from None
        except OSError as exc:
            raise DeliveryError(f"could not reach the mail server: {exc}") from None
