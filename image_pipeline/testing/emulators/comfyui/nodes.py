"""The node classes the emulated ComfyUI knows: their inputs as ``INPUT_TYPES`` declares them (types,
min/max, lists of choices, with the loaders' lists made of the installed files), their return types,
whether they are output nodes, the ``/object_info`` record of each, and a tiny evaluator that computes
what each node would hand downstream (texts, seed, size, model names), so a test can see what reached
the sampler and the image.

Specs follow ComfyUI ``nodes.py`` and ``comfy_extras/nodes_custom_sampler.py``, ``nodes_flux.py``,
``nodes_sd3.py`` (v0.3.68); only the classes the shipped workflows and their variants use.
"""

from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384
SEED_MAX = 0xFFFFFFFFFFFFFFFF
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might "
    "have accidentally set the batch_size to a large number."
)

Spec = dict[str, Any]


def _int(default: int, low: int, high: int) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": low, "max": high})


def _float(default: float, low: float, high: float) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": low, "max": high})


def catalog(files: dict[str, list[str]]) -> dict[str, Spec]:
    """Every known class: {"required", "optional", "output", "output_node"}; the loaders list ``files``
    (by ComfyUI models folder: checkpoints, diffusion_models, text_encoders, vae)."""
    sampler_inputs = {
        "model": ("MODEL",),
        "steps": _int(20, 1, 10000),
        "cfg": _float(8.0, 0.0, 100.0),
        "sampler_name": (SAMPLERS,),
        "scheduler": (SCHEDULERS,),
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "latent_image": ("LATENT",),
    }
    size = {"width": _int(512, 16, MAX_RESOLUTION), "height": _int(512, 16, MAX_RESOLUTION)}
    return {
        "CheckpointLoaderSimple": {
            "required": {"ckpt_name": (list(files.get("checkpoints", [])),)},
            "output": ("MODEL", "CLIP", "VAE"),
        },
        "UNETLoader": {
            "required": {
                "unet_name": (list(files.get("diffusion_models", [])),),
                "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],),
            },
            "output": ("MODEL",),
        },
        "DualCLIPLoader": {
            "required": {
                "clip_name1": (list(files.get("text_encoders", [])),),
                "clip_name2": (list(files.get("text_encoders", [])),),
                "type": (["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"],),
            },
            "optional": {"device": (["default", "cpu"],)},
            "output": ("CLIP",),
        },
        "VAELoader": {"required": {"vae_name": (list(files.get("vae", [])),)}, "output": ("VAE",)},
        "CLIPTextEncode": {
            "required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)},
            "output": ("CONDITIONING",),
        },
        "FluxGuidance": {
            "required": {"conditioning": ("CONDITIONING",), "guidance": _float(3.5, 0.0, 100.0)},
            "output": ("CONDITIONING",),
        },
        "ConditioningZeroOut": {"required": {"conditioning": ("CONDITIONING",)}, "output": ("CONDITIONING",)},
        "EmptyLatentImage": {
            "required": {**size, "batch_size": _int(1, 1, 4096)},
            "output": ("LATENT",),
        },
        "EmptySD3LatentImage": {
            "required": {**size, "batch_size": _int(1, 1, 4096)},
            "output": ("LATENT",),
        },
        "KSampler": {
            "required": {**sampler_inputs, "seed": _int(0, 0, SEED_MAX), "denoise": _float(1.0, 0.0, 1.0)},
            "output": ("LATENT",),
        },
        "KSamplerAdvanced": {
            "required": {
                **sampler_inputs,
                "add_noise": (["enable", "disable"],),
                "noise_seed": _int(0, 0, SEED_MAX),
                "start_at_step": _int(0, 0, 10000),
                "end_at_step": _int(10000, 0, 10000),
                "return_with_leftover_noise": (["disable", "enable"],),
            },
            "output": ("LATENT",),
        },
        "RandomNoise": {"required": {"noise_seed": _int(0, 0, SEED_MAX)}, "output": ("NOISE",)},
        "KSamplerSelect": {"required": {"sampler_name": (SAMPLERS,)}, "output": ("SAMPLER",)},
        "BasicScheduler": {
            "required": {
                "model": ("MODEL",),
                "scheduler": (SCHEDULERS,),
                "steps": _int(20, 1, 10000),
                "denoise": _float(1.0, 0.0, 1.0),
            },
            "output": ("SIGMAS",),
        },
        "BasicGuider": {
            "required": {"model": ("MODEL",), "conditioning": ("CONDITIONING",)},
            "output": ("GUIDER",),
        },
        "CFGGuider": {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "cfg": _float(8.0, 0.0, 100.0),
            },
            "output": ("GUIDER",),
        },
        "SamplerCustomAdvanced": {
            "required": {
                "noise": ("NOISE",),
                "guider": ("GUIDER",),
                "sampler": ("SAMPLER",),
                "sigmas": ("SIGMAS",),
                "latent_image": ("LATENT",),
            },
            "output": ("LATENT", "LATENT"),
        },
        "VAEDecode": {"required": {"samples": ("LATENT",), "vae": ("VAE",)}, "output": ("IMAGE",)},
        "SaveImage": {
            "required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
            "output": (),
            "output_node": True,
        },
        "PreviewImage": {"required": {"images": ("IMAGE",)}, "output": (), "output_node": True},
    }


def object_info(name: str, spec: Spec) -> dict[str, Any]:
    """The record GET /object_info gives for a class (server.py ``node_info``)."""

    def inputs(section: dict[str, tuple[Any, ...]]) -> dict[str, list[Any]]:
        return {k: [v[0], v[1] if len(v) > 1 else {}] for k, v in section.items()}

    declared = {"required": inputs(spec.get("required", {}))}
    if spec.get("optional"):
        declared["optional"] = inputs(spec["optional"])
    return {
        "input": declared,
        "input_order": {k: list(v) for k, v in declared.items()},
        "output": list(spec.get("output", ())),
        "output_is_list": [False] * len(spec.get("output", ())),
        "output_name": list(spec.get("output", ())),
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": "nodes",
        "category": "emulated",
        "output_node": bool(spec.get("output_node")),
    }


def evaluate(graph: dict[str, Any], node_id: str, memo: dict[str, tuple[Any, ...]]) -> tuple[Any, ...]:
    """What a node hands downstream, as plain values (no tensors): a sampler's latent carries the texts
    of its positive and negative side, the seed, the size and the model names that reached it."""
    if node_id in memo:
        return memo[node_id]
    node = graph[node_id]
    raw = node.get("inputs") or {}
    inp: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, list) and len(value) == 2:
            inp[name] = evaluate(graph, str(value[0]), memo)[int(value[1])]
        else:
            inp[name] = value
    cls = node["class_type"]
    out: tuple[Any, ...]
    if cls == "CheckpointLoaderSimple":
        name = inp["ckpt_name"]
        out = ({"models": [name]}, {"clip": name}, {"vae": name})
    elif cls == "UNETLoader":
        out = ({"models": [inp["unet_name"]]},)
    elif cls == "DualCLIPLoader":
        out = ({"clip": f"{inp['clip_name1']}+{inp['clip_name2']}"},)
    elif cls == "VAELoader":
        out = ({"vae": inp["vae_name"]},)
    elif cls == "CLIPTextEncode":
        out = ({"texts": [str(inp["text"])]},)
    elif cls == "FluxGuidance":
        out = ({**inp["conditioning"], "guidance": inp["guidance"]},)
    elif cls == "ConditioningZeroOut":
        out = ({"texts": [], "zeroed": True},)
    elif cls in ("EmptyLatentImage", "EmptySD3LatentImage"):
        out = ({"width": int(inp["width"]), "height": int(inp["height"]), "batch": int(inp["batch_size"])},)
    elif cls in ("KSampler", "KSamplerAdvanced"):
        seed = inp["seed"] if cls == "KSampler" else inp["noise_seed"]
        out = (_sampled(inp["latent_image"], seed, inp["model"], inp["positive"], inp["negative"]),)
    elif cls == "RandomNoise":
        out = ({"seed": int(inp["noise_seed"])},)
    elif cls == "KSamplerSelect":
        out = ({"sampler": inp["sampler_name"]},)
    elif cls == "BasicScheduler":
        out = ({"steps": inp["steps"]},)
    elif cls == "BasicGuider":
        out = ({"model": inp["model"], "positive": inp["conditioning"], "negative": {"texts": []}},)
    elif cls == "CFGGuider":
        out = ({"model": inp["model"], "positive": inp["positive"], "negative": inp["negative"]},)
    elif cls == "SamplerCustomAdvanced":
        guider = inp["guider"]
        latent = _sampled(
            inp["latent_image"], inp["noise"]["seed"], guider["model"], guider["positive"], guider["negative"]
        )
        out = (latent, latent)
    elif cls == "VAEDecode":
        out = ({**inp["samples"], "vae": inp["vae"]["vae"]},)
    else:  # output nodes: the worker renders and saves their images
        out = ()
    memo[node_id] = out
    return out


def _sampled(latent: dict[str, Any], seed: Any, model: dict[str, Any], pos: Any, neg: Any) -> dict[str, Any]:
    return {
        **latent,
        "seed": int(seed),
        "models": list(model.get("models", [])),
        "positive": list(pos.get("texts", [])),
        "negative": list(neg.get("texts", [])),
    }
