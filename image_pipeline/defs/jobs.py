"""The job that the schedule, the sensor and ``make run`` share: all four assets for given prompts."""

import dagster as dg

from image_pipeline.defs.assets import GROUP
from image_pipeline.domain.checks import FAIL, WARN, render_markdown, render_table
from image_pipeline.lifecycle.gate import run_preflight
from image_pipeline.lifecycle.ledger import PostLedger
from image_pipeline.services.images.interface import ImageGenerator
from image_pipeline.services.publisher.interface import Publisher
from image_pipeline.services.sheets import PromptSheet

process_prompts_job = dg.define_asset_job(
    "process_prompts_job",
    selection=dg.AssetSelection.groups(GROUP),
    tags={"pipeline": "image"},
    description="Generate, post and log the selected prompt partitions.",
    # The steps wait on APIs and overlap their own work inside; a process per step would only add a
    # Python start and a code load to every run the daemon launches (seconds, for an instant post).
    executor_def=dg.in_process_executor,
)


@dg.op(
    description="Checks Sheets, Hugging Face and Telegram with their cheapest real calls (as `doctor`).",
    tags={"kind": "preflight"},
)
def preflight(
    context: dg.OpExecutionContext,
    prompt_sheet: PromptSheet,
    image_generator: ImageGenerator,
    publisher: Publisher,
    ledger: PostLedger,
) -> dg.Output[None]:
    checks = run_preflight([prompt_sheet, image_generator, publisher, ledger])
    context.log.info("preflight:\n" + render_table(checks))
    failed = [c for c in checks if c.status == FAIL]
    metadata = {
        "checks": dg.MetadataValue.md(render_markdown(checks)),
        "failed": len(failed),
        "warnings": sum(c.status == WARN for c in checks),
    }
    if failed:
        summary = "; ".join(f"{c.service} {c.name}: {c.detail} -> {c.fix}" for c in failed)
        raise dg.Failure(description=f"preflight failed: {summary}", metadata=metadata)
    return dg.Output(None, metadata=metadata)


@dg.job(
    description="Preflight: is every configured service ready? Fails with what to fix.",
    executor_def=dg.in_process_executor,
)
def preflight_job() -> None:
    preflight()


@dg.op(description="Lifts the budget guard's pause, once credits were added or the quota renewed.")
def resume_spending(context: dg.OpExecutionContext, ledger: PostLedger) -> dg.Output[None]:
    lifted = ledger.open().resume()
    for pause in lifted:
        context.log.info(f"resumed: {pause.service} had paused spending: {pause.reason}")
    if not lifted:
        context.log.info("spending was not paused; nothing to do")
    return dg.Output(None, metadata={"pauses_lifted": len(lifted)})


@dg.job(
    description="Budget guard: resume spending after credits ran out (the schedule and sensor skip until then).",
    executor_def=dg.in_process_executor,
)
def resume_spending_job() -> None:
    resume_spending()
