"""The run's claim on a prompt before each irreversible step, and a transient fault counted as an attempt."""

from typing import Any

from image_pipeline.domain.records import PromptRecord
from image_pipeline.domain.rows import clean_text
from image_pipeline.domain.statuses import FAILED, RETRY
from image_pipeline.lifecycle.ledger import Ledger, PostLedger


def hold(book: Ledger, owner: str, is_stale: Any, ledger: PostLedger, key: str, record: PromptRecord) -> bool:
    """Renew this run's claim before an irreversible step; False when another live run took the prompt."""
    return book.claim(
        key,
        record.fingerprint,
        owner=owner,
        prompt=clean_text(record.prompt),
        lease_s=ledger.lease_s,
        is_stale=is_stale,
    )


def transient_outcome(
    book: Ledger, ledger: PostLedger, key: str, fingerprint: str, what: str, exc: Exception
) -> tuple[str, str]:
    """A fault that outlasted the retries: try again in a later run, until the prompt is quarantined."""
    attempts = book.add_attempt(key, fingerprint, f"{what}: {exc}")
    if attempts >= ledger.max_attempts:
        return FAILED, f"{what} failed {attempts} times (quarantined): {exc}"
    return RETRY, f"{what} failed (attempt {attempts} of {ledger.max_attempts}, will retry): {exc}"
