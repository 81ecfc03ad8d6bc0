"""The ``generated_image`` + ``telegram_post`` multi-asset: each claimed prompt's image generated (in parallel,
within the budget), checked, and posted exactly once through the ledger, with its asset checks."""

# no `from __future__ import annotations` here: Dagster reads the `context` annotation as a real type

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from image_pipeline.defs.assets.common import (
    GROUP,
    IO,
    TELEGRAM_POST,
    _ledger_context,
    _per_partition,
    _single,
    _stop,
)
from image_pipeline.defs.checks import pre_post_check_results, pre_post_check_specs
from image_pipeline.defs.io_manager import PartitionFileIOManager
from image_pipeline.defs.partitions import prompt_partitions
from image_pipeline.domain.errors import (
    ServiceBlocked,
)
from image_pipeline.domain.records import ByPartition, ImageOutcome, PostOutcome, PromptRecord
from image_pipeline.domain.redact import redact
from image_pipeline.domain.statuses import (
    BUSY,
    READY,
)
from image_pipeline.lifecycle.batch import BatchGeneration, settle_suspects, witness
from image_pipeline.lifecycle.generation import plan_generation
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.lifecycle.posting import notify, post_one
from image_pipeline.lifecycle.progress import RunProgress
from image_pipeline.lifecycle.records import GENERATED_IMAGE, in_queue_order
from image_pipeline.lifecycle.suspects import Suspects
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.images.preview import PREVIEW_LABEL
from image_pipeline.services.publisher.interface import Publisher


@dg.multi_asset(
    name="generate_and_post",
    outs={
        GENERATED_IMAGE: dg.AssetOut(
            io_manager_key=IO,
            kinds={"huggingface"},
            group_name=GROUP,
            code_version="3",
            description="The image generated for the prompt, stored as a PNG file, with a preview in the UI.",
        ),
        TELEGRAM_POST: dg.AssetOut(
            io_manager_key=IO,
            kinds={"telegram"},
            group_name=GROUP,
            code_version="3",
            description="The post of the image to the channel, with the chat id and message id Telegram gave it.",
        ),
    },
    internal_asset_deps={
        GENERATED_IMAGE: {dg.AssetKey("prompt_record")},
        TELEGRAM_POST: {dg.AssetKey("prompt_record"), dg.AssetKey(GENERATED_IMAGE)},
    },
    partitions_def=prompt_partitions,
    pool="hf_api",
    check_specs=pre_post_check_specs(),
)
def generate_and_post(
    context: dg.AssetExecutionContext,
    prompt_record: ByPartition,
    image_generator: ImageGenerator,
    publisher: Publisher,
    ledger: PostLedger,
    pipeline_io_manager: dg.ResourceParam[PartitionFileIOManager],
) -> Iterator[dg.Output[ByPartition]]:
    """Generate the batch's images and post each one as soon as it and the ones before it are ready.

    One step, so that generation (the provider's latency, ``concurrency`` requests at a time) and posting
    (Telegram's pace) overlap instead of waiting for each other; posts still leave in queue order. Images
    go to disk as they are made. A service refusing us stops the step: posts already made are in the
    ledger, and the next run logs them without posting again.
    """
    context.log.info(f"image generator backend: {image_generator.describe()}")
    context.log.info(f"publisher backend: {publisher.describe()}")
    book, owner, is_stale = _ledger_context(context, ledger)
    # workers sharing a ledger share each chat's pace through it; the embedded default keeps the pacing file
    publisher.pace_with(book if ledger.url else None)
    store = pipeline_io_manager.store(context.run.run_id)
    previews = store.base / "previews"  # what APPROVE posts: kept apart from the run's own files
    outcomes, todo = plan_generation(prompt_record, book, owner, is_stale, ledger)
    posts = ByPartition()
    batch = _single(context) is None
    progress = RunProgress(context.run.run_id, len(prompt_record), context.log.info)
    progress.start()
    generation = BatchGeneration(image_generator, store, book, ledger)
    suspects = Suspects()  # prompts refused with an answer no rule explains (lifecycle/suspects.py)

    def finished(key: str, record: PromptRecord) -> None:
        progress.finished(key, *_progress_status(record, posts[key]))
        if batch:
            # attached as each prompt finishes, while the next images are still being made
            context.add_asset_metadata(
                _image_partition_metadata(key, outcomes[key]), asset_key=GENERATED_IMAGE, partition_key=key
            )
            context.add_asset_metadata(
                _post_partition_metadata(posts[key]), asset_key=TELEGRAM_POST, partition_key=key
            )

    # More threads than request slots: an image is decoded, encoded and written while the next
    # requests are already in flight (the generator holds a slot only for the request itself).
    with ThreadPoolExecutor(max_workers=max(1, image_generator.concurrency) + 2) as pool:
        futures = {}
        counts = {key: n for key, _fp, _req, n in todo}
        for key, fp, req, n in todo:
            over = generation.capped(key, n)
            if over is not None:
                outcomes[key] = over[0]
                context.log.warning(f"{key}: {over[1]}")
            else:
                futures[key] = pool.submit(generation.generate, key, fp, req, n)
        try:
            for key, record in in_queue_order(prompt_record):
                generation.stop_if_refused()
                if key in futures:
                    outcome, note = futures[key].result()
                    _tell_backends(context, publisher, generation)
                    (context.log.info if outcome.ok else context.log.warning)(f"{key}: {note}")
                    outcomes[key] = outcome
                    witness(
                        suspects,
                        key,
                        "images",
                        outcome.ok,
                        outcome.meta.get("unknown_answer"),
                        outcome.reason,
                    )
                generation.stop_if_refused()
                post = posts[key] = post_one(
                    context, book, owner, is_stale, ledger, publisher, key, record, outcomes[key], previews
                )
                generation.posted(key)
                witness(suspects, key, "telegram", post.status == "POSTED", post.unknown_answer, post.reason)
                if key not in suspects.pending:  # a suspect's outcome is known once the batch is through
                    finished(key, record)
            fingerprints = {key: record.fingerprint for key, record in prompt_record.items()}
            for key in settle_suspects(suspects, fingerprints, outcomes, posts, book, ledger):
                finished(key, prompt_record[key])
        except ServiceBlocked as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            _tell_backends(context, publisher, generation)
            for key, future in futures.items():
                if future.cancelled():  # never started: its reserved share of the image cap goes back
                    generation.give_back(counts[key])
            raise _stop(context, publisher, exc, book) from None
    yield dg.Output(
        outcomes,
        output_name=GENERATED_IMAGE,
        metadata=_per_partition(context, GENERATED_IMAGE, outcomes, _image_partition_metadata, added=batch),
    )
    yield dg.Output(
        posts,
        output_name=TELEGRAM_POST,
        metadata=_per_partition(
            context, TELEGRAM_POST, posts, lambda _key, post: _post_partition_metadata(post), added=batch
        ),
    )
    yield from pre_post_check_results(posts)


def _tell_backends(
    context: dg.AssetExecutionContext, publisher: Publisher, generation: BatchGeneration
) -> None:
    """A backend of IMAGE_BACKENDS refused us and the next one went on: the operator hears it once."""
    for message in generation.take_notices():
        context.log.warning(redact(message))
        notify(publisher, f"image-pipeline: {redact(message)}")


def _progress_status(record: PromptRecord, post: PostOutcome) -> tuple[str, str]:
    if post.status == "POSTED":
        note = f" ({post.note})" if post.note else ""
        return "POSTED", f"message {post.message_id} in chat {post.chat_id}{note}"
    # a prompt that never got to the post: its record says why (INVALID, GONE, LOGGED, ...)
    status = post.status if record.status in (READY, BUSY) else record.status
    return status, redact(post.reason)


def _image_partition_metadata(key: str, outcome: ImageOutcome) -> dict[str, Any]:
    if not outcome.ok:
        return {"status": outcome.status, "reason": outcome.meta.get("reason", "")}
    m = outcome.meta
    metadata: dict[str, Any] = {
        "status": "OK",
        "size": f"{m['width']}x{m['height']}",
        "width": m["width"],
        "height": m["height"],
        "model": m["model"],
        "provider": m["provider"],
        "backend": str(m.get("backend", "")),
        "seed": m["seed"] if m["seed"] is not None else "",
        "negative_prompt": dg.MetadataValue.text(str(m.get("negative_prompt", ""))),
        "generation_s": dg.MetadataValue.float(float(m["generation_s"])),
        "bytes": m["bytes"],
        "sha256": m["sha256"],
    }
    if m.get("fallback"):
        metadata["fallback"] = dg.MetadataValue.text(str(m["fallback"]))
    if outcome.thumbnail:
        metadata["preview"] = dg.MetadataValue.md(outcome.thumbnail)
    if outcome.path:
        metadata["path"] = dg.MetadataValue.path(outcome.path)
    if m.get("preview"):
        metadata["offline_preview"] = dg.MetadataValue.text(PREVIEW_LABEL)
    return metadata


def _post_partition_metadata(post: PostOutcome) -> dict[str, Any]:
    metadata: dict[str, Any] = {"status": post.status}
    if post.status == "POSTED":
        metadata.update(
            chat_id=post.chat_id,
            message_id=post.message_id,
            method=post.method,
            image_sha256=post.image_sha256,
        )
        if post.link:
            metadata["link"] = dg.MetadataValue.url(post.link)
        if post.note:
            metadata["note"] = post.note
        if post.original_message_ids:
            metadata["original_message_ids"] = ", ".join(post.original_message_ids)
        # the reproducibility record: with these the image can be traced and generated again
        meta = post.image_meta
        if meta.get("sha256"):
            metadata.update(
                model=str(meta.get("model", "")),
                provider=str(meta.get("provider", "")),
                backend=str(meta.get("backend", "")),
                seed=str(meta["seed"]) if meta.get("seed") is not None else "",
                size=f"{meta['width']}x{meta['height']}",
                negative_prompt=dg.MetadataValue.text(str(meta.get("negative_prompt", ""))),
                generation_s=dg.MetadataValue.float(float(meta.get("generation_s") or 0.0)),
            )
        if meta.get("original_sha256"):  # image_sha256 above is the marked file's, as posted
            metadata.update(
                original_sha256=str(meta["original_sha256"]), watermark=str(meta.get("watermark"))
            )
    else:
        metadata["reason"] = post.reason
    return metadata
