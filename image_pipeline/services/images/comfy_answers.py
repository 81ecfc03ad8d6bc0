"""What ComfyUI's answers mean for one prompt: validation refusals (``node_errors``) and job outcomes in
``/history``, each turned into the project's typed errors with a message naming the node to fix.

Shapes from ComfyUI ``server.py`` (POST /prompt) and ``execution.py`` (``validate_prompt``,
``validate_inputs``, ``PromptExecutor.handle_execution_error``, ``PromptQueue.task_done``); no HTTP here.

Decisions (the classification table of the README's ComfyUI section):
- a validation error is the prompt's fault only when every failing input holds a value the *row* chose
  (its model, size or seed): a row naming a checkpoint that is not installed fails that row; the same
  error on the configured default, a missing custom node (``invalid_prompt``) or any other node error is
  the workflow's or server's problem and would refuse every prompt -> ServiceBlocked;
- an out-of-memory exception: ComfyUI unloads every model after one, so a retry often succeeds ->
  TransientError, turned into ServiceBlocked when it persists through the retries; when the row asked for
  a larger image than the configured default, the row's size is the likely cause -> PromptRejected;
- any other node exception is usually the workflow's or the server's (a missing model file, a custom
  node's bug, a model/VAE mismatch), rarely the prompt's, but nothing documented says which: the prompt
  becomes a *suspect* (PromptRejected with ``unknown``), so a second prompt with the same answer stops the
  run with every prompt queued, and a prompt served meanwhile proves it was this prompt's;
- ``execution_interrupted`` (a Cancel in the UI, another client's /interrupt) -> TransientError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from image_pipeline.domain.errors import PipelineError, PromptRejected, ServiceBlocked, TransientError
from image_pipeline.domain.redact import redact
from image_pipeline.services.images.comfy_workflow import Graph, Slot, describe_node

SERVICE = "images"
DETAIL_CHARS = 300


@dataclass(frozen=True)
class Submitted:
    """One submission, as the classifier needs it."""

    graph: Graph
    output: str | None
    row_slots: frozenset[Slot]  # inputs holding a value the row chose (its model, size, seed)
    checkpoint_slots: frozenset[Slot]
    model: str  # the model file the graph asks for ("" when the workflow has no model slot)
    row_chose_model: bool
    row_larger_than_default: bool


def _short(text: Any) -> str:
    one = " ".join(str(text).split())
    return redact(one if len(one) <= DETAIL_CHARS else one[: DETAIL_CHARS - 1] + "…")


def node_error_lines(graph: Graph, node_errors: dict[str, Any]) -> list[str]:
    """One line per error: node (id, class, title), input, ComfyUI's message and details."""
    lines = []
    for node_id, entry in (node_errors or {}).items():
        node = describe_node(graph, str(node_id)) if str(node_id) in graph else f"#{node_id}"
        for error in (entry or {}).get("errors") or []:
            input_name = (error.get("extra_info") or {}).get("input_name")
            where = f"{node} input {input_name}" if input_name else node
            details = f" ({_short(error.get('details'))})" if error.get("details") else ""
            lines.append(f"{where}: {error.get('message', error.get('type', '?'))}{details}")
    return lines


def _failing_slots(node_errors: dict[str, Any]) -> list[Slot | None]:
    slots: list[Slot | None] = []
    for node_id, entry in (node_errors or {}).items():
        for error in (entry or {}).get("errors") or []:
            name = (error.get("extra_info") or {}).get("input_name")
            slots.append(Slot(str(node_id), str(name)) if name else None)
    return slots


def output_refused(node_errors: dict[str, Any], output: str | None) -> bool:
    """A 200 may carry node_errors for outputs that were skipped: ours must not be one of them."""
    if not node_errors:
        return False
    if output is None:
        return True
    return any(
        str(node_id) == output or output in [str(o) for o in (entry or {}).get("dependent_outputs") or []]
        for node_id, entry in node_errors.items()
    )


def refusal(status: int, body: Any, sent: Submitted) -> PipelineError:
    """POST /prompt refused the graph (a 400, or a 200 whose node_errors cover our output node)."""
    body = body if isinstance(body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    kind = str(error.get("type") or "")
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    if kind == "invalid_prompt":
        match = re.search(r"#([^'\"\s]+)", str(error.get("details") or ""))
        node_id = match.group(1) if match else ""
        node = describe_node(sent.graph, node_id) if node_id in sent.graph else f"#{node_id or '?'}"
        return ServiceBlocked(
            f"ComfyUI refused the workflow: {_short(error.get('message'))} (node {node}) -> install the "
            "custom node that provides it (ComfyUI-Manager > Install Missing Custom Nodes) and restart "
            "ComfyUI, or use a workflow without it",
            service=SERVICE,
            status=status,
        )
    lines = node_error_lines(sent.graph, node_errors)
    if not lines:
        text = f"{kind or 'HTTP ' + str(status)}: {_short(error.get('message') or body or 'no details')}"
        return ServiceBlocked(
            f"ComfyUI refused the workflow ({text}) -> open it in ComfyUI and queue it there to see why",
            service=SERVICE,
            status=status,
        )
    failing = _failing_slots(node_errors)
    listed = "; ".join(lines)
    if all(slot is not None and slot in sent.row_slots for slot in failing):
        hint = (
            f" -> the row's model {sent.model!r} is not installed on ComfyUI: name an installed one"
            if any(slot in sent.checkpoint_slots for slot in failing)
            else ""
        )
        return PromptRejected(
            f"ComfyUI refused this row's values: {listed}{hint}", service=SERVICE, status=status
        )
    if any(slot in sent.checkpoint_slots for slot in failing if slot is not None):
        fix = "set COMFYUI_MODEL to an installed model (the doctor lists them), or install it"
        return ServiceBlocked(
            f"ComfyUI: the configured model {sent.model!r} is not installed: {listed} -> {fix}",
            service=SERVICE,
            status=status,
        )
    return ServiceBlocked(
        f"ComfyUI refused the workflow: {listed} -> fix these nodes in the workflow (or install what they "
        "name) and Export (API) again",
        service=SERVICE,
        status=status,
    )


def _events(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    events: dict[str, dict[str, Any]] = {}
    for item in status.get("messages") or []:
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], dict):
            events[str(item[0])] = item[1]
    return events


def job_failure(entry: dict[str, Any], sent: Submitted) -> PipelineError | None:
    """The error a finished history entry means, or None when it succeeded."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    if status.get("status_str") != "error":
        return None
    events = _events(entry)
    if "execution_interrupted" in events:
        data = events["execution_interrupted"]
        node = describe_node(sent.graph, str(data.get("node_id"))) if data.get("node_id") else "?"
        return TransientError(
            f"ComfyUI interrupted the job at node {node} (Cancel in the UI, or a client's /interrupt)",
            service=SERVICE,
        )
    data = events.get("execution_error")
    if data is None:
        rejected = PromptRejected(
            "ComfyUI ended the job with status error and no error event", service=SERVICE
        )
        rejected.unknown = True
        return rejected
    node_id = str(data.get("node_id") or "")
    node = (
        describe_node(sent.graph, node_id)
        if node_id in sent.graph
        else f"#{node_id} {data.get('node_type', '')}"
    )
    exc_type = str(data.get("exception_type") or "Exception")
    message = str(data.get("exception_message") or "").strip()
    first_line = _short(message.splitlines()[0] if message else "")
    if exc_type.endswith("OutOfMemoryError") or "ran out of memory" in message:
        if sent.row_larger_than_default:
            return PromptRejected(
                f"ComfyUI ran out of GPU memory at node {node} at the size this row asks for -> ask for a "
                "smaller width/height in the row",
                service=SERVICE,
            )
        oom = TransientError(f"ComfyUI ran out of GPU memory at node {node} ({exc_type})", service=SERVICE)
        # read by ImageGenerator.generate: an OOM that survives the retries is the configuration's
        oom.persistent_service_message = (  # type: ignore[attr-defined]
            f"ComfyUI runs out of GPU memory at node {node} on every try -> lower COMFYUI width/height "
            "defaults, use a smaller model or start ComfyUI with --lowvram; prompts stay queued"
        )
        return oom
    rejected = PromptRejected(
        f"ComfyUI node {node} raised {exc_type}: {first_line} -> if every prompt fails like this, the "
        "workflow or a model file is wrong: queue the workflow in ComfyUI to see the full error",
        service=SERVICE,
    )
    rejected.unknown = True
    return rejected


def first_image(outputs: dict[str, Any], output: str | None) -> dict[str, Any] | None:
    """The image to download: our output node's first, else the first saved one (type "output"), else any."""

    def images(node_id: str) -> list[dict[str, Any]]:
        got = (outputs.get(node_id) or {}).get("images") if isinstance(outputs.get(node_id), dict) else None
        return [i for i in got or [] if isinstance(i, dict) and i.get("filename")]

    if output is not None and images(output):
        return images(output)[0]
    every = [img for node_id in outputs for img in images(str(node_id))]
    saved = [img for img in every if img.get("type") == "output"]
    return (saved or every or [None])[0]
