"""The asset graph: prompt record -> generated image -> Telegram post -> Done entry.

Every asset is partitioned by prompt id and handles all partitions of its run at once, so a run may
carry one prompt (from the UI or the schedule) or a batch. A prompt that fails gets a FAILED outcome
that flows downstream to its Done row; a service that refuses us (token, permission, credits) stops the
run instead, leaving the queue untouched.
"""

import base64
import contextlib
import hashlib
import io
from typing import Any

import dagster as dg
from PIL import Image

from .errors import PipelineError, PromptRejected, ServiceBlocked, TransientError
from .io_managers import ByPartition, ImageOutcome
from .models import (
    FAILED,
    INVALID,
    SUCCESS,
    DoneEntry,
    PromptRow,
    build_request,
    caption_for,
    clean_text,
    validate_prompt,
)
from .partitions import prompt_partitions
from .redact import redact
from .resources.images import PREVIEW_LABEL, ImageGenerator
from .resources.publisher import Publisher, receipt_dict
from .resources.sheets import PromptSheet

GROUP = "image_pipeline"
IO = "pipeline_io_manager"

# prompt_record statuses
READY = "READY"
GONE = "GONE"  # no row carries the id any more: deleted by a person, or already processed and removed


def _stop(context: dg.AssetExecutionContext, publisher: Publisher | None, exc: ServiceBlocked) -> dg.Failure:
    """A service refuses us: tell the operator once, stop the run, leave the queue as it is."""
    message = redact(str(exc))
    context.log.error(message)
    if publisher is not None:
        publisher.notify(f"image-pipeline stopped: {message}")
    return dg.Failure(description=message, metadata={"service": exc.service, "status": str(exc.status or "")})


def _single(context: dg.AssetExecutionContext) -> str | None:
    keys = context.partition_keys
    return keys[0] if len(keys) == 1 else None


def _in_queue_order(records: ByPartition) -> list[tuple[str, dict[str, Any]]]:
    """Oldest first, as the queue lists them: a batch posts in the order a person queued."""
    return sorted(records.items(), key=lambda kv: (int(kv[1].get("row_number") or 0), kv[0]))


def _row_from_record(record: dict[str, Any]) -> PromptRow:
    return PromptRow(
        int(record.get("row_number") or 0), record["prompt"], record["id"], dict(record.get("params", {}))
    )


def _thumbnail_markdown(png: bytes, alt: str) -> str:
    # A ~256 px JPEG as a data URI stays small in the event log and renders inline in the UI.
    with Image.open(io.BytesIO(png)) as im:
        thumb = im.convert("RGB")
        thumb.thumbnail((256, 256))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=70)
    b64 = base64.b64encode(buf.getvalue()).decode("ascii")
    safe_alt = "".join(ch for ch in alt[:40] if ch.isalnum() or ch == " ") or "image"
    return f"![{safe_alt}](data:image/jpeg;base64,{b64})"


@dg.asset(
    partitions_def=prompt_partitions,
    group_name=GROUP,
    io_manager_key=IO,
    kinds={"googlesheets"},
    pool="sheets_api",
    code_version="1",
)
def prompt_record(
    context: dg.AssetExecutionContext, prompt_sheet: PromptSheet, image_generator: ImageGenerator
) -> dg.Output[ByPartition]:
    """The queued prompt as the sheet holds it now, validated, with its generation parameters."""
    keys = context.partition_keys
    context.log.info(f"prompt sheet backend: {prompt_sheet.describe()}")
    try:
        rows = prompt_sheet.find_rows(keys)
    except ServiceBlocked as exc:
        raise _stop(context, None, exc) from None
    except TransientError as exc:
        raise dg.Failure(description=f"the prompt sheet is unreachable: {exc}") from None
    records = ByPartition()
    for key in keys:
        row = rows.get(key)
        if row is None:
            records[key] = {"id": key, "status": GONE, "reason": "no row in the queue carries this id"}
            context.log.warning(f"{key}: no row in the queue carries this id; nothing to do")
            continue
        record: dict[str, Any] = {
            "id": key,
            "row_number": row.row_number,
            "prompt": row.prompt,
            "params": row.params,
            "fingerprint": row.fingerprint(),
        }
        check = validate_prompt(row.prompt)
        if not check.ok:
            record.update(status=INVALID, reason=check.reason)
        else:
            try:
                req = build_request(
                    row,
                    default_model=image_generator.model,
                    default_width=image_generator.width,
                    default_height=image_generator.height,
                )
            except ValueError as exc:
                record.update(status=INVALID, reason=str(exc))
            else:
                record.update(status=READY, reason="", request=req.__dict__)
        records[key] = record
    metadata: dict[str, Any] = {"partitions": len(keys)}
    if (key := _single(context)) is not None:
        rec = records[key]
        metadata.update(
            status=rec["status"],
            prompt=dg.MetadataValue.text(clean_text(rec.get("prompt", ""))[:500]),
            reason=rec.get("reason", ""),
            row_number=int(rec.get("row_number") or 0),
        )
    else:
        metadata["statuses"] = dg.MetadataValue.json(_count(r["status"] for r in records.values()))
    return dg.Output(records, metadata=metadata)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


@dg.asset(
    partitions_def=prompt_partitions,
    group_name=GROUP,
    io_manager_key=IO,
    kinds={"huggingface"},
    pool="hf_api",
    code_version="1",
)
def generated_image(
    context: dg.AssetExecutionContext,
    prompt_record: ByPartition,
    image_generator: ImageGenerator,
    publisher: Publisher,
) -> dg.Output[ByPartition]:
    """The image generated for the prompt, stored as a PNG file, with a preview in the UI."""
    context.log.info(f"image generator backend: {image_generator.describe()}")
    outcomes = ByPartition()
    for key, record in _in_queue_order(prompt_record):
        if record["status"] != READY:
            outcomes[key] = ImageOutcome("SKIPPED", {"reason": record.get("reason", record["status"])})
            continue
        req = record["request"]
        from .models import GenerationRequest

        request = GenerationRequest(**req)
        try:
            image = image_generator.generate(request)
        except ServiceBlocked as exc:
            raise _stop(context, publisher, exc) from None
        except (PromptRejected, TransientError) as exc:
            context.log.warning(f"{key}: generation failed: {exc}")
            outcomes[key] = ImageOutcome("FAILED", {"reason": f"generation failed: {exc}"})
            continue
        meta = {
            "width": image.width,
            "height": image.height,
            "model": image.model,
            "provider": image.provider,
            "seed": image.seed,
            "generation_s": image.seconds,
            "preview": image.preview,
            "sha256": hashlib.sha256(image.png).hexdigest(),
            "bytes": len(image.png),
        }
        context.log.info(f"{key}: {image.width}x{image.height} from {image.model} in {image.seconds:.2f}s")
        outcomes[key] = ImageOutcome("OK", meta, image.png)
    return dg.Output(outcomes, metadata=_image_metadata(context, outcomes))


def _image_metadata(context: dg.AssetExecutionContext, outcomes: ByPartition) -> dict[str, Any]:
    key = _single(context)
    if key is None:
        return {
            "partitions": len(outcomes),
            "statuses": dg.MetadataValue.json(_count(o.status for o in outcomes.values())),
        }
    outcome: ImageOutcome = outcomes[key]
    if not outcome.ok:
        return {"status": outcome.status, "reason": outcome.meta.get("reason", "")}
    m = outcome.meta
    assert outcome.png is not None
    metadata: dict[str, Any] = {
        "status": "OK",
        "preview": dg.MetadataValue.md(_thumbnail_markdown(outcome.png, key)),
        "size": f"{m['width']}x{m['height']}",
        "width": m["width"],
        "height": m["height"],
        "model": m["model"],
        "provider": m["provider"],
        "seed": m["seed"] if m["seed"] is not None else "",
        "generation_s": dg.MetadataValue.float(float(m["generation_s"])),
        "bytes": m["bytes"],
        "sha256": m["sha256"],
    }
    if m.get("preview"):
        metadata["offline_preview"] = dg.MetadataValue.text(PREVIEW_LABEL)
    return metadata


@dg.asset(
    partitions_def=prompt_partitions,
    group_name=GROUP,
    io_manager_key=IO,
    kinds={"telegram"},
    pool="telegram_api",
    code_version="1",
)
def telegram_post(
    context: dg.AssetExecutionContext,
    prompt_record: ByPartition,
    generated_image: ByPartition,
    publisher: Publisher,
) -> dg.Output[ByPartition]:
    """The post of the image to the channel, with the chat id and message id Telegram gave it."""
    context.log.info(f"publisher backend: {publisher.describe()}")
    posts = ByPartition()
    for key, record in _in_queue_order(prompt_record):
        image: ImageOutcome = generated_image[key]
        if not image.ok:
            posts[key] = {"status": "SKIPPED", "reason": image.meta.get("reason", image.status)}
            continue
        assert image.png is not None
        previous = _previous_post(context, key, image.meta.get("sha256", ""))
        if previous is not None:
            # This exact image was already accepted by the channel in an earlier run: never post it twice.
            context.log.warning(
                f"{key}: already posted as message {previous['message_id']}; not posting again"
            )
            posts[key] = previous
            continue
        suffix = PREVIEW_LABEL if image.meta.get("preview") else ""
        caption = caption_for(_row_from_record(record), suffix=suffix)
        try:
            receipt = publisher.publish(prompt_id=key, png=image.png, caption=caption)
        except ServiceBlocked as exc:
            raise _stop(context, publisher, exc) from None
        except (PromptRejected, TransientError) as exc:
            context.log.warning(f"{key}: posting failed: {exc}")
            posts[key] = {"status": "FAILED", "reason": f"posting failed: {exc}"}
            continue
        posts[key] = {
            "status": "POSTED",
            "image_sha256": image.meta.get("sha256", ""),
            "caption": caption,
            **receipt_dict(receipt),
        }
        context.log.info(f"{key}: posted as message {receipt.message_id} in chat {receipt.chat_id}")
    metadata: dict[str, Any] = {"partitions": len(posts)}
    if (key := _single(context)) is not None:
        post = posts[key]
        metadata.update(status=post["status"])
        if post["status"] == "POSTED":
            metadata.update(
                chat_id=post["chat_id"],
                message_id=post["message_id"],
                method=post["method"],
                image_sha256=post["image_sha256"],
            )
            if post.get("link"):
                metadata["link"] = dg.MetadataValue.url(post["link"])
            if post.get("note"):
                metadata["note"] = post["note"]
        else:
            metadata["reason"] = post.get("reason", "")
    return dg.Output(posts, metadata=metadata)


def _previous_post(context: dg.AssetExecutionContext, key: str, sha256: str) -> dict[str, Any] | None:
    """The last recorded post of this partition if it carried the same image."""
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1
    )
    for record in result.records:
        mat = record.asset_materialization
        if mat is None:
            continue
        md = mat.metadata
        status = md.get("status")
        if status is None or status.value != "POSTED":
            continue
        sha = md.get("image_sha256")
        if sha is not None and sha.value == sha256:
            return {
                "status": "POSTED",
                "image_sha256": sha256,
                "chat_id": str(md["chat_id"].value),
                "message_id": str(md["message_id"].value),
                "method": str(md["method"].value) if "method" in md else "",
                "link": str(md["link"].value) if "link" in md else "",
                "sent_bytes": 0,
                "note": "posted in an earlier run",
            }
    return None


@dg.asset(
    partitions_def=prompt_partitions,
    group_name=GROUP,
    io_manager_key=IO,
    kinds={"googlesheets"},
    pool="sheets_api",
    code_version="1",
)
def done_entry(
    context: dg.AssetExecutionContext,
    prompt_record: ByPartition,
    generated_image: ByPartition,
    telegram_post: ByPartition,
    prompt_sheet: PromptSheet,
    publisher: Publisher,
) -> dg.Output[ByPartition]:
    """The audit row appended to "Done"; afterwards the prompt's row leaves "Process" (by id)."""
    entries: dict[str, DoneEntry] = {}
    results = ByPartition()
    for key, record in _in_queue_order(prompt_record):
        if record["status"] == GONE:
            results[key] = {"status": "SKIPPED", "reason": record["reason"]}
            continue
        image: ImageOutcome = generated_image[key]
        post = telegram_post[key]
        entry = DoneEntry(id=key, prompt=clean_text(record["prompt"]), status=SUCCESS, information="")
        if record["status"] == INVALID:
            entry.status, entry.information = INVALID, record["reason"]
        elif not image.ok:
            entry.status, entry.information = FAILED, image.meta.get("reason", "generation failed")
            entry.model = record.get("request", {}).get("model", "")
        elif post["status"] != "POSTED":
            entry.status, entry.information = FAILED, post.get("reason", "posting failed")
        else:
            entry.information = f"posted to chat {post['chat_id']} as message {post['message_id']}"
            if post.get("note"):
                entry.information += f" ({post['note']})"
        if image.ok:
            m = image.meta
            entry.model = m["model"]
            entry.seed = str(m["seed"] if m["seed"] is not None else "")
            entry.size = f"{m['width']}x{m['height']}"
            entry.generation_s = str(m["generation_s"])
            entry.image_sha256 = m["sha256"]
            if m.get("preview"):
                entry.information += " [offline preview]"
        if post.get("status") == "POSTED":
            entry.message_id, entry.chat_id = post["message_id"], post["chat_id"]
        entry.information = redact(entry.information)[:1000]
        entries[key] = entry
    if entries:
        try:
            prompt_sheet.append_done(list(entries.values()))
            removal = prompt_sheet.remove_rows({k: prompt_record[k]["fingerprint"] for k in entries})
        except ServiceBlocked as exc:
            raise _stop(context, publisher, exc) from None
        except TransientError as exc:
            raise dg.Failure(description=f"the prompt sheet is unreachable: {exc}") from None
        for key, entry in entries.items():
            results[key] = {**entry.as_dict(), "queue_row": removal.get(key, "")}
            if removal.get(key) != "removed":
                context.log.warning(
                    f"{key}: the row was {removal.get(key)} in the queue meanwhile; nothing was deleted"
                )
            if entry.status == FAILED:
                _notify(publisher, f"image-pipeline: prompt {key} FAILED: {entry.information}")
    metadata: dict[str, Any] = {"partitions": len(results)}
    if (key := _single(context)) is not None:
        res = results[key]
        metadata.update(
            status=res.get("status", ""),
            information=res.get("information", res.get("reason", "")),
            queue_row=res.get("queue_row", ""),
            message_id=res.get("message_id", ""),
        )
    else:
        metadata["statuses"] = dg.MetadataValue.json(_count(r.get("status", "") for r in results.values()))
    return dg.Output(results, metadata=metadata)


def _notify(publisher: Publisher, text: str) -> None:
    # the Done row already says what happened; a lost notice is not a second failure
    with contextlib.suppress(PipelineError):
        publisher.notify(text)


ASSETS = [prompt_record, generated_image, telegram_post, done_entry]
