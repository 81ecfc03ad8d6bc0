"""``validate_prompt`` as ComfyUI ``execution.py`` does it, with the same error records: a node without
``class_type`` or of an unknown class -> ``invalid_prompt`` (a missing custom node); no output node ->
``prompt_no_outputs``; then each output node's inputs, recursively up its links:
``required_input_missing``, ``bad_linked_input``, ``return_type_mismatch``, ``invalid_input_type``,
``value_smaller_than_min``, ``value_bigger_than_max``, ``value_not_in_list``. Outputs that fail are
skipped; when none is left -> ``prompt_outputs_failed_validation`` with ``node_errors``.
"""

from __future__ import annotations

from typing import Any

from image_pipeline.testing.emulators.comfyui.nodes import Spec

Result = tuple[bool, Any, list[str], dict[str, Any]]


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def validate_prompt(prompt: dict[str, Any], known: dict[str, Spec]) -> Result:
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            error = _error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
            return False, error, [], {}
        class_type = node["class_type"]
        if class_type not in known:
            error = _error(
                "invalid_prompt",
                f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'",
            )
            return False, error, [], {}
        if known[class_type].get("output_node"):
            outputs.append(str(node_id))
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        ok, reasons = _validate_inputs(prompt, out, validated, known)
        if ok:
            good.append(out)
            continue
        failed.append((out, reasons))
        for node_id, (valid, node_reasons) in validated.items():
            # nodes downstream of a failing one are invalid without errors of their own: not listed
            if not valid and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    },
                )
                entry["dependent_outputs"].append(out)
    if not good:
        lines = [f"{e['message']}: {e['details']}" for _, errors in failed for e in errors]
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines)
        )
        return False, error, [], node_errors
    return True, None, good, node_errors


def _validate_inputs(
    prompt: dict[str, Any],
    node_id: str,
    validated: dict[str, tuple[bool, list[dict[str, Any]]]],
    known: dict[str, Spec],
) -> tuple[bool, list[dict[str, Any]]]:
    if node_id in validated:
        return validated[node_id]
    node = prompt[node_id]
    spec = known[node["class_type"]]
    inputs = node.get("inputs") or {}
    errors: list[dict[str, Any]] = []
    valid = True
    declared = [(n, s, "required") for n, s in spec.get("required", {}).items()]
    declared += [(n, s, "optional") for n, s in spec.get("optional", {}).items()]
    for name, decl, category in declared:
        input_type, options = decl[0], (decl[1] if len(decl) > 1 else {})
        info = [input_type, options]
        if name not in inputs:
            if category == "required":
                errors.append(
                    _error("required_input_missing", "Required input is missing", name, input_name=name)
                )
            continue
        value = inputs[name]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(
                    _error(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        name,
                        input_name=name,
                        input_config=info,
                        received_value=value,
                    )
                )
                continue
            source = str(value[0])
            received = known[prompt[source]["class_type"]]["output"][int(value[1])]
            if isinstance(input_type, str) and received != input_type:
                errors.append(
                    _error(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        f"{name}, received_type({received}) mismatch input_type({input_type})",
                        input_name=name,
                        input_config=info,
                        received_type=received,
                        linked_node=value,
                    )
                )
                continue
            if not _validate_inputs(prompt, source, validated, known)[0]:
                valid = False
            continue
        try:
            if input_type == "INT":
                value = int(value)
            elif input_type == "FLOAT":
                value = float(value)
            elif input_type == "STRING":
                value = str(value)
        except (TypeError, ValueError) as exc:
            errors.append(
                _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    input_name=name,
                    input_config=info,
                    received_value=value,
                    exception_message=str(exc),
                )
            )
            continue
        if "min" in options and value < options["min"]:
            errors.append(
                _error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {options['min']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            )
            continue
        if "max" in options and value > options["max"]:
            errors.append(
                _error(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {options['max']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            )
            continue
        if isinstance(input_type, list) and value not in input_type:
            big = len(input_type) > 20
            listed = f"(list of length {len(input_type)})" if big else str(input_type)
            errors.append(
                _error(
                    "value_not_in_list",
                    "Value not in list",
                    f"{name}: '{value}' not in {listed}",
                    input_name=name,
                    input_config=None if big else info,
                    received_value=value,
                )
            )
    result = (not errors and valid, errors)
    validated[node_id] = result
    return result
