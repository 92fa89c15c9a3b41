"""The `dispatcher` command (SPEC §9). Commands are thin: they parse, call a service, print.

Exit codes: 0 success; 1 a check failed / operation refused; 2 usage or configuration error;
3 ``enqueue`` accepted some rows and rejected others. Each module registers its commands on the one group.
"""

from __future__ import annotations

import os

from dispatcher.cli import campaigns, contacts, desk, operators, reminders, services  # noqa: F401  (register their commands)
from dispatcher.cli.common import EXIT_FAIL, cli, fail
from dispatcher.core.errors import ConfigError, DispatcherError, InputError
from dispatcher.core.private import PRIVATE_UMASK

__all__ = ["cli", "main"]


def main() -> None:
    # Everything a command creates (ledger, rejects, reports, outbox, Redis data) may hold receipt URLs or
    # contacts: owner-only, whatever umask the shell or service manager gave us.
    os.umask(PRIVATE_UMASK)
    try:
        cli(standalone_mode=True)
    except (ConfigError, InputError) as exc:
        fail(str(exc))
    except DispatcherError as exc:
        fail(str(exc), EXIT_FAIL)
