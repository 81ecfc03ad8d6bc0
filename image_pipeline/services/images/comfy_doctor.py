"""The doctor's rows for the ComfyUI backend, from its cheapest calls: the workflow file (local), GET
``/system_stats`` (reachable, version, devices), GET ``/object_info/{class}`` for each node class the
workflow uses (a missing custom node answers ``{}``), and the model and other file choices of the
workflow against the lists ``/object_info`` gives for them. Nothing is queued or generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from image_pipeline.domain.checks import Check, fail, ok, skipped, warn
from image_pipeline.domain.errors import PipelineError, TransientError
from image_pipeline.services.images import comfy_workflow as wf

if TYPE_CHECKING:
    from image_pipeline.services.images.comfyui import ComfyUIGenerator

COMFYUI = "ComfyUI"
NAMES = ("workflow", "server reachable", "nodes installed", "model installed")


def options(info: dict[str, Any], class_type: str, input_name: str) -> list[str] | None:
    """The choices object_info lists for an input (old nodes: ``[[...], {...}]``; v3 nodes:
    ``["COMBO", {"options": [...]}]``), or None when the input is not a list of choices."""
    spec = ((info.get(class_type) or {}).get("input")) or {}
    for section in ("required", "optional"):
        entry = (spec.get(section) or {}).get(input_name)
        if not isinstance(entry, list) or not entry:
            continue
        if isinstance(entry[0], list):
            return [str(x) for x in entry[0]]
        if entry[0] == "COMBO" and len(entry) > 1 and isinstance(entry[1], dict):
            return [str(x) for x in entry[1].get("options") or []]
    return None


def preflight_checks(gen: ComfyUIGenerator) -> list[Check]:
    checks: list[Check] = []
    try:
        graph, mapping = gen._workflow()
    except PipelineError as exc:
        fix = "set COMFYUI_WORKFLOW to a file made with Export (API), or to sdxl / flux"
        checks.append(fail(COMFYUI, NAMES[0], str(exc), fix))
        graph = mapping = None
    else:
        detail = f"{gen.workflow}: {wf.describe_mapping(graph, mapping)}"
        notes = "; ".join(mapping.notes)
        checks.append(warn(COMFYUI, NAMES[0], detail, notes) if notes else ok(COMFYUI, NAMES[0], detail))

    where = gen._public_url()
    try:
        response = gen._call("GET", "/system_stats")
        stats = gen._json(response)
        if response.status_code != 200 or not isinstance(stats, dict):
            raise gen._unexpected(response, "GET /system_stats")
    except PipelineError as exc:
        fix = (
            "start ComfyUI (add --listen when the pipeline runs on another machine) and check COMFYUI_URL"
            if isinstance(exc, TransientError)
            else "check COMFYUI_URL"
        )
        checks.append(fail(COMFYUI, NAMES[1], str(exc), fix))
        return checks + skipped(COMFYUI, NAMES[2:], "needs the server")
    system = stats.get("system") or {}
    devices = ", ".join(
        f"{d.get('name', d.get('type', '?'))} ({int(d.get('vram_free', 0)) // 2**20} MiB free)"
        for d in stats.get("devices") or []
        if isinstance(d, dict)
    )
    checks.append(
        ok(COMFYUI, NAMES[1], f"ComfyUI {system.get('comfyui_version', '?')} at {where}; {devices}")
    )
    if graph is None or mapping is None:
        return checks + skipped(COMFYUI, NAMES[2:], "needs a usable workflow")

    info: dict[str, Any] = {}
    missing = []
    try:
        for class_type in wf.class_types(graph):
            response = gen._call("GET", f"/object_info/{class_type}")
            answer = gen._json(response)
            if response.status_code != 200 or not isinstance(answer, dict):
                raise gen._unexpected(response, f"GET /object_info/{class_type}")
            if class_type in answer:
                info.update(answer)
            else:
                missing.append(class_type)
    except PipelineError as exc:
        checks.append(fail(COMFYUI, NAMES[2], str(exc), "check the server's log"))
        return checks + skipped(COMFYUI, NAMES[3:], "needs the node list")
    if missing:
        users = [wf.describe_node(graph, n) for n, node in graph.items() if node["class_type"] in missing]
        fix = "install them (ComfyUI-Manager > Install Missing Custom Nodes), restart ComfyUI"
        checks.append(fail(COMFYUI, NAMES[2], f"not installed: {', '.join(users)}", fix))
        return checks + skipped(COMFYUI, NAMES[3:], "needs every node installed")
    checks.append(ok(COMFYUI, NAMES[2], f"all {len(info)} node classes of the workflow"))
    checks.append(_files_check(gen, graph, mapping, info))
    return checks


def _files_check(gen: ComfyUIGenerator, graph: wf.Graph, mapping: wf.Mapping, info: dict[str, Any]) -> Check:
    """The default model, and every other file or choice the workflow names, against the server's lists."""
    model = gen.model or wf.checkpoint_in(graph, mapping)
    wrong = []
    for slot in mapping.checkpoint:
        listed = options(info, graph[slot.node]["class_type"], slot.input)
        if listed is not None and model not in listed:
            shown = ", ".join(listed[:10]) or "none"
            fix = (
                f"set COMFYUI_MODEL to one of: {shown}"
                if listed
                else "put a model in ComfyUI's models folder"
            )
            return fail(
                COMFYUI, NAMES[3], f"{model!r} is not installed ({wf.describe_node(graph, slot.node)})", fix
            )
    checkpoint_slots = set(mapping.checkpoint)
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if wf.is_link(value) or wf.Slot(node_id, name) in checkpoint_slots:
                continue
            listed = options(info, node["class_type"], name)
            if listed is not None and str(value) not in listed:
                wrong.append(f"{wf.describe_node(graph, node_id)} {name}={value!r}")
    if wrong:
        fix = "install those files or pick installed ones in the workflow, then Export (API) again"
        return fail(COMFYUI, NAMES[3], "not available: " + "; ".join(wrong), fix)
    return ok(COMFYUI, NAMES[3], model or "the workflow's own model")
