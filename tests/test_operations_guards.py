"""Operator behaviours the review found untested (issue 11): resend's suppression check, and resend
resetting the retry bound and the backoff.

The ledger is SQLite and PostgreSQL, the broker the real Redis, sends go to SES/SNS on moto behind the
counting fault proxy; `resend` is driven through the installed command as an operator runs it.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from datetime import timedelta

from dispatcher.core import clock
from dispatcher.core.states import Channel, Status
from dispatcher.operations import control as operations
from dispatcher.sending.delivery import deliver

from . import policy_support
from .faultproxy import FaultProxy
from .helpers import person_rows
from .policy_support import EMAIL_ONLY, MakeRuntime, contact, deliver_until_settled, enqueue_in_process, jst, statuses

# The fixtures these tests share with test_policy_guards.py
proxy = policy_support.proxy
make_runtime = policy_support.make_runtime


def run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=os.environ.copy())


# Resend's suppression check ------------------------------------------------------------------------
def test_resend_skips_suppressed_contacts_and_says_so(
    tmp_path, make_runtime: MakeRuntime, proxy: FaultProxy, moto, dispatcher_cmd
) -> None:
    rt = make_runtime()
    rows = person_rows(4, sms_every=EMAIL_ONLY)
    rows[3]["phone"] = "09011112222"  # reachable by SMS too
    ids = enqueue_in_process(rt, tmp_path, "rs", rows)
    # Given four e-mails refused for good by the provider, two of whose contacts were then suppressed
    proxy.reject = {contact(r) for r in rows}
    for delivery_id in ids.values():
        assert deliver(rt, delivery_id).status is Status.FAILED
    proxy.reject = set()
    suppressed, kept = [ids[contact(rows[0])], ids[contact(rows[1])]], [ids[contact(rows[2])]]
    rt.ledger.suppress(contact(rows[0]), Channel.EMAIL, "complaint", "test")
    rt.ledger.suppress(contact(rows[1]), Channel.EMAIL, "hard bounce", "test")
    # (and the fourth person's phone is suppressed, though the e-mail address is not)
    rt.ledger.suppress("+819011112222", Channel.SMS, "opt-out", "test")

    # When the operator previews, then runs, `dispatcher resend` of the failures
    preview = run(dispatcher_cmd, "resend", "rs", "--dry-run")
    done = run(dispatcher_cmd, "resend", "rs", "--yes")

    # Then the suppressed contacts are skipped, and the command says how many and why
    for result in (preview, done):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "skipped 2: contact on the suppression list" in result.stdout
    assert "rs: 4 selected; would resend 2 (email 2)" in preview.stdout
    assert "rs: 4 selected; re-queued 2 (email 2)" in done.stdout
    # And they are not queued: they stay failed, while the others are queued again
    assert [rt.ledger.get(d).status for d in suppressed] == [Status.FAILED, Status.FAILED]
    requeued = [*kept, ids[contact(rows[3])]]
    assert [rt.ledger.get(d).status for d in requeued] == [Status.QUEUED, Status.QUEUED]
    assert [t["to_status"] for t in rt.ledger.history(suppressed[0])][-1] == "failed"

    # When the fourth person is resent via SMS, the suppressed phone is skipped too
    via = run(dispatcher_cmd, "resend", "rs", "--status", "queued,failed", "--via", "sms", "--yes")
    assert via.returncode == 0, via.stdout + via.stderr
    assert "rs: 4 selected; would resend 0 (none)" in via.stdout
    assert "skipped 1: contact on the suppression list" in via.stdout
    assert "skipped 3: no sms contact on the row" in via.stdout
    assert rt.ledger.get(ids[contact(rows[3])]).channel is Channel.EMAIL

    # And when the workers send what was queued, nobody suppressed is reached
    for delivery_id in [*suppressed, *requeued]:
        deliver(rt, delivery_id)
    assert proxy.accepted_counts() == Counter({contact(rows[2]): 1, contact(rows[3]): 1})
    assert moto.sent_sms() == []


# Resend resetting the retry base -------------------------------------------------------------------
def test_resend_gives_max_attempts_fresh_attempts_and_backoff_starts_from_the_base(
    tmp_path, make_runtime: MakeRuntime, proxy: FaultProxy, moto
) -> None:
    # Given at most 4 attempts, a 1 s backoff base (doubling up to an hour), and a provider failing every send
    base = 1.0
    rt = make_runtime(MAX_ATTEMPTS="4", RETRY_BASE_SECONDS=str(base), RETRY_MAX_SECONDS="3600")
    clock.start_at(jst(2023, 4, 5, 10, 0))
    rows = person_rows(3, sms_every=EMAIL_ONLY)
    ids = list(
        enqueue_in_process(
            rt, tmp_path, "rb", rows, send_by="2023-05-28T20:00:00+09:00", deadline="2023-05-31T23:59:59+09:00"
        ).values()
    )
    proxy.server_error_rate = 1.0
    for delivery_id in ids:
        assert statuses(deliver_until_settled(rt, delivery_id))[-1] is Status.FAILED
        assert rt.ledger.get(delivery_id).attempts == 4
    assert proxy.attempt_counts() == Counter({contact(r): 4 for r in rows})

    # When the operator resends them (the provider still failing)
    dispatched: list[int] = []
    plan = operations.resend(rt, "rb", dispatched.extend, who="test")
    assert sorted(plan.requeued) == sorted(dispatched) == sorted(ids)

    # Then the first retry after the resend waits no longer than the base: the backoff starts again
    for delivery_id in ids:
        outcome = deliver(rt, delivery_id)
        assert outcome.status is Status.RETRYING and outcome.again_at is not None
        waited = outcome.again_at - clock.now()
        assert timedelta(0) < waited <= timedelta(seconds=base)
    # And each delivery gets max_attempts fresh attempts, no more, no fewer, then fails saying so
    for delivery_id in ids:
        clock.start_at(clock.now() + timedelta(seconds=2))
        rest = deliver_until_settled(rt, delivery_id)
        assert statuses(rest) == [Status.RETRYING, Status.RETRYING, Status.FAILED]
        failed = rt.ledger.get(delivery_id)
        assert (failed.status, failed.attempts, failed.attempts_base) == (Status.FAILED, 8, 4)
        assert "gave up after 8 attempts" in rt.ledger.history(delivery_id)[-1]["detail"]
    assert proxy.attempt_counts() == Counter({contact(r): 8 for r in rows})
    assert moto.sent_emails() == []
