"""`erpwatch run` loads aiosmtplib only when an SMTP session opens, and the email package's
message builder (policy, header registry, generator) only when a mail is rendered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAIL_BUILDER = ("email.policy", "email.headerregistry", "email.generator")

SETUP = f"""\
import asyncio, socket, sys
from datetime import UTC, datetime
import watchdog.app, watchdog.api
from alerting.service import AlertService
from alerting.stages import Notification
from alerting.transport import DeliveryError
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.store import EventStore

def loaded(*names):
    return [name for name in names if name in sys.modules]

BUILDER = {MAIL_BUILDER!r}
assert not loaded("aiosmtplib", *BUILDER), loaded("aiosmtplib", *BUILDER)
"""


def run(code: str, tmp_path: Path) -> None:
    """Run ``code`` after `SETUP` in a fresh interpreter, in ``tmp_path``, without our env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    done = subprocess.run(
        [sys.executable, "-c", SETUP + code], capture_output=True, text=True, cwd=tmp_path,
        timeout=60, env={**base, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_eml_mail_is_rendered_and_written_without_aiosmtplib(tmp_path: Path) -> None:
    run(
        """
async def main():
    settings = load_settings(log_path="logs", db_path="erpwatch.db", alert_to=["ops@x.org"])
    with EventStore(settings.db_path) as store:
        bus = EventBus(store)
        service = AlertService(settings, store, bus, hostname="h")
        assert not loaded("aiosmtplib", *BUILDER), "imported by the service"
        note = Notification("test", "erpwatch", ["ops@x.org"])
        mail = service.renderer.render(note, datetime.now(UTC))
        assert loaded(*BUILDER) == list(BUILDER), "rendered without the builder?"
        async with service.transport.session() as session:
            assert "written to" in await session.send(mail.data, "s@x.org", mail.recipients)
        await bus.close()
    assert "aiosmtplib" not in sys.modules, "imported by an .eml delivery"

asyncio.run(main())
""",
        tmp_path,
    )


def test_aiosmtplib_loads_with_the_first_smtp_session(tmp_path: Path) -> None:
    run(
        """
async def main():
    with socket.socket() as closed:  # bound, not listening: connecting is refused
        closed.bind(("127.0.0.1", 0))
        settings = load_settings(
            log_path="logs", db_path="erpwatch.db", alert_to=["ops@x.org"],
            smtp_host="127.0.0.1", smtp_port=closed.getsockname()[1], smtp_security="none",
        )
        with EventStore(settings.db_path) as store:
            bus = EventBus(store)
            service = AlertService(settings, store, bus, hostname="h")
            assert not loaded("aiosmtplib", *BUILDER), "imported by the service"
            try:
                async with service.transport.session():
                    raise AssertionError("connected to a closed port")
            except DeliveryError as error:  # classified by the session: a dead server delays
                assert not error.permanent and error.whole_batch, error
            await bus.close()
    assert "aiosmtplib" in sys.modules

asyncio.run(main())
""",
        tmp_path,
    )
