"""``campaignctl resolve ID --sent|--not-sent``: settle a send whose outcome is unknown.

A campaign is SEND_OUTCOME_UNKNOWN when a sender may have handed the email to
SES without recording the answer (a crash, a read timeout, a 5xx). Only a
person who checked SES (sending events, the recipient) knows which it was:

- ``--sent``: the email went out -> SENT; the run's email_sends row -> "sent".
- ``--not-sent``: it did not -> READY_TO_SEND; the row -> "not_sent" (which a
  new send attempt may claim again as its intent) and an email_sending task is
  queued.

Both are one compare-and-set with the row update in the same transaction.
"""

from __future__ import annotations

import argparse
from campaignctl.cli import campaign_id
from campaignctl.commands.workflow_cmds import _with_context, report
from campaignctl.context import AppContext


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("resolve", help="settle a send with unknown outcome: --sent or --not-sent (then resent)",
                       description="Settle a SEND_OUTCOME_UNKNOWN campaign after checking SES: --sent marks it "
                                   "SENT; --not-sent puts it back to READY_TO_SEND and queues the send again.")
    p.add_argument("id", type=campaign_id, help="campaign id")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--sent", action="store_true", help="the email did go out")
    group.add_argument("--not-sent", action="store_true", help="the email did not go out: send it again")
    p.set_defaults(func=cmd_resolve)


@_with_context
def cmd_resolve(args: argparse.Namespace, ctx: AppContext) -> int:
    from campaignctl import operations as ops

    return report("resolve", ops.resolve(ctx, args.id, sent=args.sent))
