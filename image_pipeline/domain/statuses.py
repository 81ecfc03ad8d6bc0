"""Every status word in one place: what the sheet shows (and a person may type), what Done records, and
what a prompt's record says inside a run."""

from __future__ import annotations

# Done statuses, as the README documents them.
SUCCESS = "SUCCESS"
FAILED = "FAILED"
INVALID = "INVALID"
# what a person types
HOLD = "HOLD"  # keep it queued, skip it
PREVIEW = "PREVIEW"  # generate, send only to the alert chat, wait for APPROVE
APPROVE = "APPROVE"  # publish the previewed image(s) as they are
REPOST = "REPOST"  # after CHECK CHANNEL: the post is not in the channel, send it
SKIP = "SKIP"  # a preview card's Skip (lifecycle/presses.py): like HOLD, left out until a person changes it
COMMANDS = (HOLD, PREVIEW, APPROVE, REPOST, SKIP)
# what the pipeline writes
QUEUED = "QUEUED"
GENERATING = "GENERATING"
AWAITING_APPROVAL = "AWAITING APPROVAL"
# The photo may or may not be in the channel: the answer to the send was lost, a 5xx came back, or the
# process died during the send. Not the prompt's fault, and never sent again blind, since bots have no
# idempotency key and cannot read a channel back (services/publisher/refusals.py). The row stays queued, held,
# until a person looks: REPOST sends it, deleting the row (it is there) ends it.
CHECK_CHANNEL = "CHECK CHANNEL"


# prompt_record statuses
READY = "READY"
GONE = "GONE"  # no row carries the id any more: deleted by a person, or already processed and removed
BUSY = "BUSY"  # another live run holds the claim
HELD_STATUS = "HELD"  # a person holds it (HOLD) or it waits for APPROVE: stays queued, nothing done
QUARANTINED = "QUARANTINED"  # failed transiently in too many runs: gets a FAILED Done row
# outcome of a transient failure that did not use up the attempts: the prompt stays queued
RETRY = "RETRY"
# today's cap of images or posts is used up: the prompt stays queued for another day, no attempt counted
CAPPED = "CAPPED"

# A prompt's state in the post ledger (lifecycle/ledger.py): how far its irreversible steps got.
POSTING = "POSTING"
POSTED = "POSTED"
UNCERTAIN = "UNCERTAIN"
PREVIEWED = "PREVIEWED"
LOGGING = "LOGGING"
LOGGED = "LOGGED"
REMOVED = "REMOVED"
