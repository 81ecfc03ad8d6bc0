"""The offline preview generator: abstract art drawn locally, for the embedded default with no credentials."""

from __future__ import annotations

import hashlib
import random
from typing import ClassVar

from PIL import Image, ImageDraw, ImageFont
from pydantic import Field

from image_pipeline.domain.checks import Check, ok
from image_pipeline.domain.rows import GenerationRequest
from image_pipeline.services.images.huggingface import IMAGES
from image_pipeline.services.images.interface import ImageGenerator

PREVIEW_LABEL = "Offline preview: abstract art drawn locally, not an AI image"


class OfflinePreviewGenerator(ImageGenerator):
    """Deterministic abstract art drawn with Pillow from the prompt; no network, no model, clearly labelled."""

    kind: ClassVar[str] = "preview"

    model: str = Field(default="offline-preview", description="Label recorded as the model.")

    @property
    def is_preview(self) -> bool:
        return True

    def preflight(self) -> list[Check]:
        return [
            ok(IMAGES, "generator", "offline preview generator (no HF_TOKEN): images are labelled previews")
        ]

    def describe(self) -> str:
        return "offline preview generator (Pillow; no AI model)"

    def _provider(self) -> str:
        return "offline"

    def _pick_seed(self, request: GenerationRequest) -> int | None:
        if request.seed is not None:
            return request.seed
        digest = hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:4], "big") >> 1

    def _generate_once(self, request: GenerationRequest, seed: int | None) -> Image.Image:
        return render_preview(request.prompt, request.width, request.height, seed or 0)


def render_preview(prompt: str, width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(f"{seed}:{prompt}")

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    # A diagonal two-colour gradient as the ground, then translucent shapes.
    mask = Image.linear_gradient("L").rotate(rng.choice([0, 45, 90, 135, 180]), expand=False)
    mask = mask.resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), colour()), Image.new("RGB", (width, height), colour()), mask
    )
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    side = min(width, height)
    for _ in range(rng.randint(6, 14)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(side // 16, side // 3)
        fill = (*colour(), rng.randint(70, 170))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            points = [(x + rng.randint(-r, r), y + rng.randint(-r, r)) for _ in range(rng.randint(3, 6))]
            draw.polygon(points, fill=fill)
    image = Image.alpha_composite(image.convert("RGBA"), overlay)
    # The label is part of the picture, so a preview can never pass for a generated image.
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, side // 28))
    text = "OFFLINE PREVIEW"
    box = draw.textbbox((0, 0), text, font=font)
    pad = max(4, side // 100)
    tw, th = box[2] - box[0], box[3] - box[1]
    draw.rectangle((pad, pad, pad * 3 + tw, pad * 3 + th), fill=(0, 0, 0, 170))
    draw.text((pad * 2 - box[0], pad * 2 - box[1]), text, fill=(255, 255, 255, 255), font=font)
    return image.convert("RGB")
