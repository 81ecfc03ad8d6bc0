"""The workflow mapping: where a row's values go in an API-format ComfyUI graph (pure, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_pipeline.services.images import comfy_workflow as wf
from image_pipeline.services.images.comfy_workflow import Slot, Values


def test_shipped_sdxl_is_mapped_by_node_class() -> None:
    graph = wf.load_workflow("sdxl")
    m = wf.locate(graph)
    assert m.positive == (Slot("6", "text"),)
    assert m.negative == (Slot("7", "text"),)
    assert m.seed == (Slot("3", "seed"),)
    assert m.size == (Slot("5", "width"), Slot("5", "height"))
    assert m.checkpoint == (Slot("4", "ckpt_name"),)
    assert m.output == "9"
    assert set(m.how.values()) == {"class"}
    assert wf.checkpoint_in(graph, m) == "sd_xl_base_1.0.safetensors"
    assert m.missing() == []


def test_shipped_flux_is_mapped_by_title_markers_and_has_no_negative() -> None:
    graph = wf.load_workflow("FLUX")
    m = wf.locate(graph)
    assert (m.positive, m.seed, m.checkpoint) == (
        (Slot("6", "text"),),
        (Slot("25", "noise_seed"),),
        (Slot("12", "unet_name"),),
    )
    assert m.size == (Slot("27", "width"), Slot("27", "height"))
    assert m.negative == ()
    assert {m.how[k] for k in ("positive", "seed", "size", "checkpoint", "output")} == {"marker"}
    assert any("negative" in note for note in m.notes)


def test_flux_without_markers_is_found_through_the_guider_chain() -> None:
    graph = wf.load_workflow("flux")
    for node in graph.values():
        node["_meta"] = {"title": node["class_type"]}
    m = wf.locate(graph)
    # SamplerCustomAdvanced <- BasicGuider.conditioning <- FluxGuidance <- CLIPTextEncode
    assert m.positive == (Slot("6", "text"),)
    assert m.seed == (Slot("25", "noise_seed"),)
    assert m.checkpoint == (Slot("12", "unet_name"),)
    assert m.size == (Slot("27", "width"), Slot("27", "height"))
    assert m.output == "9" and m.how["positive"] == "class"


def test_a_marker_wins_over_the_node_class_whatever_its_case() -> None:
    graph = wf.load_workflow("sdxl")
    # the prompt text comes from a custom string node: the marker sends the prompt there, not to #6
    graph["30"] = {"class_type": "Text Multiline", "inputs": {"text": "x"}, "_meta": {"title": "  Positive "}}
    graph["6"]["inputs"]["text"] = ["30", 0]
    m = wf.locate(graph)
    assert m.positive == (Slot("30", "text"),) and m.how["positive"] == "marker"
    assert m.negative == (Slot("7", "text"),) and m.how["negative"] == "class"


def test_inject_sets_values_on_a_copy_and_keeps_the_workflow_negative_when_the_row_has_none() -> None:
    graph = wf.load_workflow("sdxl")
    m = wf.locate(graph)
    out = wf.inject(graph, m, Values("a red fox", None, 1234, 64, 96, "other.safetensors"))
    assert out["6"]["inputs"]["text"] == "a red fox"
    assert out["7"]["inputs"]["text"] == graph["7"]["inputs"]["text"]  # the workflow's own negative
    assert out["3"]["inputs"]["seed"] == 1234
    assert (out["5"]["inputs"]["width"], out["5"]["inputs"]["height"]) == (64, 96)
    assert out["4"]["inputs"]["ckpt_name"] == "other.safetensors"
    assert graph["6"]["inputs"]["text"] != "a red fox"  # the loaded workflow is untouched
    out = wf.inject(graph, m, Values("p", "blurry", 1, 64, 64, None))
    assert out["7"]["inputs"]["text"] == "blurry"
    assert out["4"]["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors"


def test_a_zeroed_out_negative_from_the_positive_encoder_is_not_a_negative_node() -> None:
    graph = wf.load_workflow("sdxl")
    del graph["7"]
    graph["7"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}
    m = wf.locate(graph)
    assert m.positive == (Slot("6", "text"),) and m.negative == ()


def test_two_model_loaders_need_a_checkpoint_marker() -> None:
    graph = wf.load_workflow("sdxl")
    graph["40"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "refiner.safetensors"}}
    graph["3"]["inputs"]["model"] = ["40", 0]
    m = wf.locate(graph)
    assert m.checkpoint == () and any("checkpoint" in n for n in m.notes)
    graph["4"]["_meta"] = {"title": "checkpoint"}
    assert wf.locate(graph).checkpoint == (Slot("4", "ckpt_name"),)


def test_a_workflow_without_a_known_sampler_names_the_seed_marker() -> None:
    graph = wf.load_workflow("sdxl")
    graph["3"]["class_type"] = "MyFancySampler"
    problems = wf.locate(graph).missing()
    print(problems)
    assert len(problems) == 2  # neither seed nor prompt: the encoders hang off an unknown sampler
    assert any("'seed'" in p and "Export (API)" in p for p in problems)
    graph["3"]["_meta"] = {"title": "seed"}
    graph["6"]["_meta"] = {"title": "positive"}
    m = wf.locate(graph)
    assert m.missing() == [] and m.seed == (Slot("3", "seed"),)


def test_a_marker_on_a_node_without_that_input_is_refused() -> None:
    graph = wf.load_workflow("sdxl")
    graph["8"]["_meta"] = {"title": "seed"}
    with pytest.raises(wf.WorkflowError, match="titled 'seed'"):
        wf.locate(graph)


def test_a_ui_format_workflow_is_refused_with_the_export_hint(tmp_path: Path) -> None:
    path = tmp_path / "ui.json"
    path.write_text(json.dumps({"last_node_id": 9, "nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(wf.WorkflowError, match=r"export it with Export \(API\)"):
        wf.load_workflow(str(path))


def test_unreadable_and_non_json_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(wf.WorkflowError, match="shipped names: sdxl, flux"):
        wf.load_workflow(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(wf.WorkflowError, match="not JSON"):
        wf.load_workflow(str(bad))
    good = tmp_path / "mine.json"
    good.write_text(json.dumps(wf.load_workflow("sdxl")))
    assert wf.locate(wf.load_workflow(str(good))).output == "9"
