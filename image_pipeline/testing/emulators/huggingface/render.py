"""The pictures the emulator answers with: a deterministic image for (prompt, seed), real PNG, JPEG or
WebP bytes that a client decodes as it would a generated one, cheap enough for a benchmark."""

from __future__ import annotations

import hashlib
import io
import random

from PIL import Image, ImageDraw

_GRADIENT = Image.linear_gradient("L")  # 256x256, built once: resizing it is far cheaper than drawing


def render_image(
    prompt: str, seed: int | None, width: int, height: int, fmt: str = "png", blank: bool = False
) -> bytes:
    """A deterministic picture for (prompt, seed): a coloured gradient with a few shapes on it."""
    if blank:
        img = Image.new("RGB", (width, height), (0, 0, 0))
    else:
        digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
        rng = random.Random(digest)
        base = _GRADIENT.resize((width, height))
        channels = [
            base,
            base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            Image.new("L", (width, height), rng.randrange(40, 220)),
        ]
        rng.shuffle(channels)
        img = Image.merge("RGB", channels)
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1 = min(width, x0 + rng.randrange(max(2, width // 8), max(3, width // 2)))
            y1 = min(height, y0 + rng.randrange(max(2, height // 8), max(3, height // 2)))
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
    out = io.BytesIO()
    if fmt == "jpeg":
        img.save(out, format="JPEG", quality=85)
    elif fmt == "webp":
        img.save(out, format="WEBP", quality=80, method=0)  # replicate's default output_format
    else:
        # level 1: 1024x1024 encodes in a few ms; the default level costs several times that
        img.save(out, format="PNG", compress_level=1)
    return out.getvalue()
