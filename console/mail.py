"""The e-mail backend of a console on this machine (`make run`): one log line per message
(recipient and subject), not the whole message on the console for every notification."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.core.mail.backends.base import BaseEmailBackend

log = logging.getLogger("baton.mail")


class OneLineEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[Any]) -> int:
        for message in email_messages:
            log.info("e-mail to %s: %s", ", ".join(message.recipients()), message.subject)
        return len(email_messages)
