"""A user's ComfyUI workflow in the "Export (API)" format, and where a row's values go in it.

Pure functions over the graph (``{node_id: {"class_type", "inputs": {name: literal | [src_id, slot]},
"_meta": {"title"}}}``); no HTTP. The backend (``comfyui.py``) loads a workflow once, locates the slots,
and injects each request's values into a fresh copy.

Workflow mapping (the README quotes this):

1. **Title markers first.** A node whose title (``_meta.title``; right-click > Title in ComfyUI) is one
   of these words, compared case-insensitively after trimming, receives that value:

   ============  =====================================================================================
   title         input(s) set on that node
   ============  =====================================================================================
   positive      the prompt: ``text`` (CLIPTextEncode), ``text_g``/``text_l`` (CLIPTextEncodeSDXL),
                 ``clip_l``/``t5xxl`` (CLIPTextEncodeFlux), ``clip_l``/``clip_g``/``t5xxl`` (SD3)
   negative      the row's negative prompt, same inputs as ``positive``
   seed          ``seed`` or ``noise_seed`` (or ``value`` of a PrimitiveInt)
   size          ``width`` and ``height``
   checkpoint    ``ckpt_name`` or ``unet_name``
   output        the node whose first image is downloaded (SaveImage, PreviewImage or a custom one)
   ============  =====================================================================================

   Several nodes may carry one marker (a base and a refiner encoder): each receives the value.
2. **Otherwise by node class**, searching only the nodes the output node depends on:
   - output: the ``SaveImage`` node (else ``PreviewImage``); without one, every node is searched and the
     image is the first one the history lists;
   - prompt / negative: the text encoders reached upstream from the ``positive`` / ``negative`` inputs of
     ``KSampler``, ``KSamplerAdvanced``, ``SamplerCustom``, ``CFGGuider`` (and the ``conditioning``
     input of ``BasicGuider``, FLUX's), through any conditioning nodes in between (``FluxGuidance``,
     ``ConditioningCombine``...). An encoder reached from both sides (FLUX's ``ConditioningZeroOut``
     negative) counts as positive only;
   - seed: ``KSampler.seed``, ``KSamplerAdvanced.noise_seed``, ``SamplerCustom.noise_seed``,
     ``RandomNoise.noise_seed`` (every one found gets the same seed);
   - size: ``EmptyLatentImage`` / ``EmptySD3LatentImage`` ``width`` and ``height``;
   - checkpoint: ``CheckpointLoaderSimple.ckpt_name`` / ``UNETLoader.unet_name``, when exactly one
     loader is found (a base + refiner pair needs a ``checkpoint`` marker on the one rows may change).

The prompt and the seed are required: a workflow where either cannot be located is refused with the
marker to add. Size and checkpoint are optional (the workflow's own values stay). A negative prompt is
optional: without a negative node, a row's negative prompt is ignored with a warning; a row without one
keeps the workflow's own negative text. A UI-format file (``nodes``/``links`` at the top) is refused
with "export it with Export (API)".
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

Graph = dict[str, dict[str, Any]]

# the workflows shipped with the package, by the short name the `workflow` field accepts
SHIPPED = {"sdxl": "sdxl_api.json", "flux": "flux_api.json"}

MARKERS = ("positive", "negative", "seed", "size", "checkpoint", "output")
TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "clip_g", "t5xxl")
SEED_INPUTS = ("seed", "noise_seed", "value")
CHECKPOINT_INPUTS = ("ckpt_name", "unet_name")

# class -> (positive input, negative input or None)
CONDITIONED = {
    "KSampler": ("positive", "negative"),
    "KSamplerAdvanced": ("positive", "negative"),
    "SamplerCustom": ("positive", "negative"),
    "CFGGuider": ("positive", "negative"),
    "BasicGuider": ("conditioning", None),
}
TEXT_ENCODERS = {
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("text_g", "text_l"),
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl"),
    "CLIPTextEncodeSD3": ("clip_l", "clip_g", "t5xxl"),
}
SEEDED = {
    "KSampler": "seed",
    "KSamplerAdvanced": "noise_seed",
    "SamplerCustom": "noise_seed",
    "RandomNoise": "noise_seed",
}
LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage")
LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name"}
OUTPUTS = ("SaveImage", "PreviewImage")

MARK_HOW = "right-click the node > Title, name it '{marker}', then Export (API) again"


class WorkflowError(ValueError):
    """The workflow file cannot be used as it is; the message says what to change."""


@dataclass(frozen=True)
class Slot:
    """One input of one node."""

    node: str
    input: str


@dataclass(frozen=True)
class Mapping:
    """Where each value goes, and how it was found ("marker" or "class") for the doctor's detail."""

    positive: tuple[Slot, ...] = ()
    negative: tuple[Slot, ...] = ()
    seed: tuple[Slot, ...] = ()
    size: tuple[Slot, ...] = ()  # width and height slots, in pairs
    checkpoint: tuple[Slot, ...] = ()
    output: str | None = None
    how: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        """The required values no node takes, each with the marker that fixes it."""
        problems = []
        if not self.positive:
            problems.append(
                "no node takes the prompt: give its text encoder the title 'positive' ("
                + MARK_HOW.format(marker="positive")
                + ")"
            )
        if not self.seed:
            problems.append(
                "no node takes the seed: give the sampler or RandomNoise node the title 'seed' ("
                + MARK_HOW.format(marker="seed")
                + ")"
            )
        return problems


@dataclass(frozen=True)
class Values:
    prompt: str
    negative: str | None
    seed: int
    width: int
    height: int
    checkpoint: str | None


# ----------------------------------------------------------------------------- loading
def load_workflow(source: str) -> Graph:
    """A shipped workflow by short name ("sdxl", "flux") or a path to an API-format JSON file."""
    name = source.strip()
    if name.lower() in SHIPPED:
        text = (
            resources.files("image_pipeline").joinpath("workflows", SHIPPED[name.lower()]).read_text("utf-8")
        )
        where = f"shipped workflow {name.lower()}"
    else:
        path = Path(name).expanduser()
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            shipped = ", ".join(SHIPPED)
            raise WorkflowError(
                f"cannot read the workflow {where} ({type(exc).__name__}): give a path to a file made with "
                f"Export (API), or one of the shipped names: {shipped}"
            ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise WorkflowError(f"the workflow {where} is not JSON ({exc})") from None
    return parse_workflow(data, where)


def parse_workflow(data: Any, where: str = "the workflow") -> Graph:
    """Check the shape of an API-format graph; a UI-format workflow gets the message that fixes it."""
    if isinstance(data, dict) and ("nodes" in data and "links" in data):
        raise WorkflowError(
            f"{where} is a UI workflow (it has 'nodes' and 'links'), not the API format: in ComfyUI open it "
            "and export it with Export (API) (Workflow > Export (API); in older versions enable the dev "
            "mode options in the settings first)"
        )
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"{where} is not an API-format workflow (an object of nodes by id)")
    graph: Graph = {}
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise WorkflowError(
                f"{where}: node #{node_id} has no class_type, so this is not the API format; "
                "export it with Export (API)"
            )
        inputs = node.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise WorkflowError(f"{where}: node #{node_id} has inputs that are not an object")
        graph[str(node_id)] = {**node, "inputs": dict(inputs)}
    return graph


# ----------------------------------------------------------------------------- reading the graph
def title_of(node: dict[str, Any]) -> str:
    meta = node.get("_meta")
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def describe_node(graph: Graph, node_id: str) -> str:
    """``#4 CheckpointLoaderSimple "Load Checkpoint"`` (the title only when the user gave one)."""
    node = graph.get(node_id) or {}
    cls = str(node.get("class_type", "?"))
    title = title_of(node)
    return f"#{node_id} {cls}" + (f' "{title}"' if title and title != cls else "")


def upstream(graph: Graph, starts: Iterable[str], *, stop_at: Iterable[str] = ()) -> list[str]:
    """Nodes reachable by following input links from ``starts`` (included), breadth first; a node whose
    class is in ``stop_at`` is kept but not walked past."""
    stop = set(stop_at)
    seen: list[str] = []
    todo = deque(s for s in starts if s in graph)
    while todo:
        node_id = todo.popleft()
        if node_id in seen:
            continue
        seen.append(node_id)
        if graph[node_id].get("class_type") in stop:
            continue
        for value in graph[node_id]["inputs"].values():
            if is_link(value) and str(value[0]) in graph:
                todo.append(str(value[0]))
    return seen


def _marked(graph: Graph, marker: str) -> list[str]:
    return [nid for nid, node in graph.items() if title_of(node).strip().lower() == marker]


def _slots(graph: Graph, node_ids: Iterable[str], names: Iterable[str], marker: str) -> tuple[Slot, ...]:
    out: list[Slot] = []
    wanted = tuple(names)
    for nid in node_ids:
        found = [Slot(nid, name) for name in wanted if name in graph[nid]["inputs"]]
        if not found:
            raise WorkflowError(
                f"node {describe_node(graph, nid)} is titled '{marker}' but has none of the inputs "
                f"{', '.join(wanted)}: give that title to the node that takes the {marker} value"
            )
        # a seed goes to one input; text to every text input of the encoder
        out.extend(found[:1] if marker in ("seed", "checkpoint") else found)
    return tuple(out)


def locate(graph: Graph) -> Mapping:
    """Where the prompt, negative prompt, seed, size and checkpoint go, and which node makes the image."""
    how: dict[str, str] = {}
    notes: list[str] = []

    outputs = _marked(graph, "output")
    if outputs:
        output: str | None = outputs[0]
        how["output"] = "marker"
    else:
        output = next((n for cls in OUTPUTS for n, node in graph.items() if node["class_type"] == cls), None)
        how["output"] = "class"
    scope = upstream(graph, [output]) if output else list(graph)

    found: dict[str, tuple[Slot, ...]] = {}
    for marker, names in (
        ("positive", TEXT_INPUTS),
        ("negative", TEXT_INPUTS),
        ("seed", SEED_INPUTS),
        ("size", ("width", "height")),
        ("checkpoint", CHECKPOINT_INPUTS),
    ):
        nodes = _marked(graph, marker)
        if nodes:
            found[marker] = _slots(graph, nodes, names, marker)
            how[marker] = "marker"

    if "positive" not in found or "negative" not in found:
        positive, negative = _encoders(graph, scope)
        for marker, nodes in (("positive", positive), ("negative", negative)):
            if marker not in found and nodes:
                found[marker] = tuple(
                    Slot(n, name) for n in nodes for name in TEXT_ENCODERS[graph[n]["class_type"]]
                )
                how[marker] = "class"
    if "seed" not in found:
        seeds = tuple(
            Slot(n, SEEDED[graph[n]["class_type"]])
            for n in scope
            if graph[n]["class_type"] in SEEDED and SEEDED[graph[n]["class_type"]] in graph[n]["inputs"]
        )
        if seeds:
            found["seed"], how["seed"] = seeds, "class"
    if "size" not in found:
        latents = [n for n in scope if graph[n]["class_type"] in LATENTS]
        if latents:
            found["size"] = tuple(Slot(n, name) for n in latents for name in ("width", "height"))
            how["size"] = "class"
        else:
            notes.append("no EmptyLatentImage node: the workflow's own size is used")
    if "checkpoint" not in found:
        loaders = [n for n in scope if graph[n]["class_type"] in LOADERS]
        if len(loaders) == 1:
            found["checkpoint"] = (Slot(loaders[0], LOADERS[graph[loaders[0]]["class_type"]]),)
            how["checkpoint"] = "class"
        elif len(loaders) > 1:
            notes.append(
                f"{len(loaders)} model loaders: mark the one rows may change with the title 'checkpoint'"
            )
    if "negative" not in found:
        notes.append("no negative prompt node: a row's negative_prompt is ignored")
    return Mapping(
        positive=found.get("positive", ()),
        negative=found.get("negative", ()),
        seed=found.get("seed", ()),
        size=found.get("size", ()),
        checkpoint=found.get("checkpoint", ()),
        output=output,
        how=how,
        notes=tuple(notes),
    )


def _encoders(graph: Graph, scope: list[str]) -> tuple[list[str], list[str]]:
    """The text encoders on the positive and on the negative side of the samplers and guiders in scope."""
    sides: dict[str, list[str]] = {"positive": [], "negative": []}
    for nid in scope:
        names = CONDITIONED.get(graph[nid]["class_type"])
        if not names:
            continue
        for side, input_name in zip(("positive", "negative"), names, strict=True):
            link = graph[nid]["inputs"].get(input_name) if input_name else None
            if not is_link(link):
                continue
            for reached in upstream(graph, [str(link[0])], stop_at=TEXT_ENCODERS):
                if graph[reached]["class_type"] in TEXT_ENCODERS and reached not in sides[side]:
                    sides[side].append(reached)
    negative = [n for n in sides["negative"] if n not in sides["positive"]]
    return sides["positive"], negative


def checkpoint_in(graph: Graph, mapping: Mapping) -> str:
    """The model file the workflow names where rows' models go ("" when it has no such slot)."""
    for slot in mapping.checkpoint:
        value = graph[slot.node]["inputs"].get(slot.input)
        if isinstance(value, str):
            return value
    return ""


def describe_mapping(graph: Graph, mapping: Mapping) -> str:
    """One line for the doctor: each value, its node(s) and how they were found."""
    parts = []
    for name, slots in (
        ("prompt", mapping.positive),
        ("negative", mapping.negative),
        ("seed", mapping.seed),
        ("size", mapping.size),
        ("checkpoint", mapping.checkpoint),
    ):
        key = "positive" if name == "prompt" else name
        if slots:
            nodes = sorted({s.node for s in slots}, key=lambda n: (len(n), n))
            parts.append(f"{name} -> {', '.join('#' + n for n in nodes)} ({mapping.how.get(key, '?')})")
    if mapping.output:
        parts.append(f"image <- #{mapping.output} ({mapping.how.get('output', '?')})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- injecting
def inject(graph: Graph, mapping: Mapping, values: Values) -> Graph:
    """A copy of the graph with the values set; the loaded workflow itself is never changed."""
    out = copy.deepcopy(graph)

    def put(slots: Iterable[Slot], value: Any) -> None:
        for slot in slots:
            out[slot.node]["inputs"][slot.input] = value

    put(mapping.positive, values.prompt)
    if values.negative is not None:
        put(mapping.negative, values.negative)
    put(mapping.seed, values.seed)
    put((s for s in mapping.size if s.input == "width"), values.width)
    put((s for s in mapping.size if s.input == "height"), values.height)
    if values.checkpoint:
        put(mapping.checkpoint, values.checkpoint)
    return out


def class_types(graph: Graph) -> list[str]:
    """Every node class the workflow uses, in first-seen order."""
    return list(dict.fromkeys(str(node["class_type"]) for node in graph.values()))
