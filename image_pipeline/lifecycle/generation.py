"""Which prompts of a batch need images, and making them: each image written to disk as it is made."""

import base64
import hashlib
import io
from dataclasses import replace
from typing import Any

from PIL import Image

from image_pipeline.domain.content_checks import check_image
from image_pipeline.domain.errors import BackendUnavailable, PromptRejected, TransientError
from image_pipeline.domain.records import ByPartition, ImageOutcome, PromptRecord
from image_pipeline.domain.refusals import signature
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.domain.statuses import BUSY, CAPPED, FAILED, READY
from image_pipeline.lifecycle.approval import APPROVED, approved_outcome, variation_seeds
from image_pipeline.lifecycle.claims import hold, transient_outcome
from image_pipeline.lifecycle.ledger import Ledger, PostLedger
from image_pipeline.lifecycle.records import GENERATED_IMAGE, check_dict, in_queue_order
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.storage import PartitionFileStore


def plan_generation(
    prompt_record: ByPartition, book: Ledger, owner: str, is_stale: Any, ledger: PostLedger
) -> tuple[ByPartition, list[tuple[str, str, GenerationRequest, int]]]:
    """Which prompts of the batch need images (and how many); the others get their outcome at once."""
    outcomes = ByPartition()
    todo: list[tuple[str, str, GenerationRequest, int]] = []
    with book.batch():
        todo_keys = plan_into(prompt_record, book, owner, is_stale, ledger, outcomes)
    for key in todo_keys:
        record: PromptRecord = prompt_record[key]
        assert record.request is not None  # READY records carry their request
        todo.append((key, record.fingerprint, record.request, record.count))
    return outcomes, todo


def plan_into(
    prompt_record: ByPartition,
    book: Ledger,
    owner: str,
    is_stale: Any,
    ledger: PostLedger,
    outcomes: ByPartition,
) -> list[str]:
    todo: list[str] = []
    for key, record in in_queue_order(prompt_record):
        if record.status != READY:
            status = BUSY if record.status == BUSY else "SKIPPED"
            outcomes[key] = ImageOutcome(status, {"reason": record.reason or record.status})
            continue
        fingerprint = record.fingerprint
        entry = book.get(key, fingerprint)
        if entry is not None and entry.post_state is not None:
            # Posted (or maybe posted) in an earlier run: generating again would only spend credits.
            outcomes[key] = ImageOutcome("SKIPPED", {"reason": f"post already {entry.post_state.lower()}"})
            continue
        if not hold(book, owner, is_stale, ledger, key, record):
            outcomes[key] = ImageOutcome("BUSY", {"reason": "another run took over this prompt"})
            continue
        if record.mode == APPROVED and entry is not None:
            # exactly what the person approved: the previewed files, not a new generation
            outcomes[key] = approved_outcome(entry)
            continue
        todo.append(key)
    return todo


def generate_to_disk(
    image_generator: ImageGenerator,
    store: PartitionFileStore,
    book: Ledger,
    ledger: PostLedger,
    key: str,
    fingerprint: str,
    request: GenerationRequest,
    count: int = 1,
) -> tuple[ImageOutcome, str]:
    """The prompt's image (or ``count`` variations with different seeds), each written to its PNG file as
    soon as it exists: memory holds only the images in flight. All or nothing: a variation that fails
    fails the prompt's images, as one post shows them all."""
    made: list[ImageOutcome] = []
    for i, seed in enumerate(variation_seeds(request.seed, count)):
        outcome, note = generate_one(
            image_generator,
            store,
            book,
            ledger,
            key if i == 0 else f"{key}-v{i + 1}",
            key,
            fingerprint,
            replace(request, seed=seed),
        )
        if not outcome.ok:
            return outcome, note
        made.append(outcome)
    if count == 1:
        return made[0], note
    first = made[0]
    meta = {**first.meta, "variations": [{**m.meta, "path": m.path} for m in made]}
    note = f"{count} variations, {first.meta['width']}x{first.meta['height']} from {first.meta['model']}"
    return ImageOutcome("OK", meta, path=first.path, thumbnail=first.thumbnail), note


def generate_one(
    image_generator: ImageGenerator,
    store: PartitionFileStore,
    book: Ledger,
    ledger: PostLedger,
    file_key: str,
    key: str,
    fingerprint: str,
    request: GenerationRequest,
) -> tuple[ImageOutcome, str]:
    try:
        image = image_generator.generate(request)
    except PromptRejected as exc:
        meta = {"reason": f"generation failed: {exc}"}
        if exc.unknown:
            meta["unknown_answer"] = signature(exc)
        return ImageOutcome(FAILED, meta), f"generation failed: {exc}"
    except TransientError as exc:
        status, reason = transient_outcome(book, ledger, key, fingerprint, "generation", exc)
        return ImageOutcome(status, {"reason": reason}), reason
    except BackendUnavailable as exc:
        # not the prompt's fault and not the pipeline's stop: it waits for its backend, no attempt counted
        reason = f"{exc}; stays queued"
        return ImageOutcome(CAPPED, {"reason": reason}), reason
    meta = {
        "width": image.width,
        "height": image.height,
        "model": image.model,
        "provider": image.provider,
        "backend": image.backend,
        "seed": image.seed,
        "negative_prompt": request.negative_prompt or "",
        "generation_s": image.seconds,
        "preview": image.preview,
        "sha256": hashlib.sha256(image.png).hexdigest(),
        "bytes": len(image.png),
    }
    path = store.write_png(GENERATED_IMAGE, file_key, image.png)
    # the image half of the pre-post checks, here in the generation thread while others are in flight
    meta["checks"] = [check_dict(c) for c in check_image(image.png, key)]
    thumbnail = thumbnail_markdown(image.png, key)
    if image.fallback:
        meta["fallback"] = image.fallback
    note = f"{image.width}x{image.height} from {image.model} in {image.seconds:.2f}s"
    if image.fallback:
        note += f" (made by {image.fallback})"
    return ImageOutcome("OK", meta, path=str(path), thumbnail=thumbnail), note


def thumbnail_markdown(png: bytes, alt: str) -> str:
    # A ~256 px JPEG as a data URI stays small in the event log and renders inline in the UI.
    with Image.open(io.BytesIO(png)) as im:
        thumb = im.convert("RGB")
        thumb.thumbnail((256, 256))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=70)
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    safe_alt = "".join(ch for ch in alt[:40] if ch.isalnum() or ch == " ") or "image"
    return f"![{safe_alt}](data:image/jpeg;base64,{b64})"
