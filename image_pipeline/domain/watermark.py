"""A label or logo drawn in a corner of a posted image: PNG bytes in, PNG bytes out, nothing else.

Deterministic on purpose: the same image and settings give the same bytes, so a post retried in a later
run sends exactly what the first attempt would have sent (exactly-once compares what was posted). Only
the corner box the mark covers is converted to RGBA, so a 6000x4000 image costs one decode and one
encode, not a full-size overlay.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
# what a row's "watermark" cell may say; empty means "as configured"
OFF_WORDS = ("off", "no", "0", "false")
ON_WORDS = ("", "on", "yes", "1", "true")
_REFERENCE_PX = 64  # the font size text is measured at before it is scaled to the wanted width


@dataclass(frozen=True)
class Watermark:
    """What to draw and where; ``size`` is the mark's width as a fraction of the image width, ``margin`` a
    fraction of the image's short side, ``opacity`` 0 (invisible) to 1."""

    text: str = ""
    logo: bytes | None = field(default=None, repr=False)
    corner: str = "bottom-right"
    margin: float = 0.02
    opacity: float = 0.8
    size: float = 0.2

    def __post_init__(self) -> None:
        if bool(self.text.strip()) == bool(self.logo):
            raise ValueError("a watermark is a text (WATERMARK_TEXT) or a logo (WATERMARK_LOGO), one of them")
        if self.corner not in CORNERS:
            raise ValueError(f"WATERMARK_CORNER {self.corner!r} is not one of {', '.join(CORNERS)}")
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(
                f"WATERMARK_MARGIN must be from 0 to below 0.5 of the short side, got {self.margin}"
            )
        if not 0.0 < self.opacity <= 1.0:
            raise ValueError(f"WATERMARK_OPACITY must be above 0 and at most 1, got {self.opacity}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"WATERMARK_SIZE must be above 0 and at most 1 of the width, got {self.size}")
        if self.logo:
            _open_logo(self.logo)  # a logo that does not decode is a setting to fix, said at once

    def describe(self) -> str:
        what = f"text {self.text!r}" if self.text.strip() else "logo"
        return f"{what}, {self.corner}, opacity {self.opacity:g}, size {self.size:g}"


def row_wants_watermark(value: str) -> bool:
    """A row's "watermark" cell: off/no/0/false turn the mark off for it; empty/on/yes/1/true keep it."""
    word = str(value).strip().lower()
    if word in OFF_WORDS:
        return False
    if word in ON_WORDS:
        return True
    raise ValueError(f"watermark must be one of on, off, yes, no, 1, 0 (or empty), got {str(value)[:40]!r}")


def apply_watermark(png: bytes, mark: Watermark) -> bytes:
    """The image with the mark in its corner, as PNG; raises ValueError when the image does not decode."""
    try:
        source = Image.open(io.BytesIO(png))
        source.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"the image cannot be decoded ({type(exc).__name__})") from None
    with source:
        chunks = _text_chunks(source)
        im: Image.Image = source
        if im.mode not in ("RGB", "RGBA"):
            has_alpha = im.mode in ("LA", "PA", "RGBa", "La") or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
        width, height = im.size
        margin = round(mark.margin * min(width, height))
        if width - 2 * margin < 1 or height - 2 * margin < 1:
            margin = 0
        room = (width - 2 * margin, height - 2 * margin)
        layer = _mark_layer(mark, max(1, min(room[0], round(mark.size * width))), room)
        left = margin if mark.corner.endswith("left") else width - margin - layer.width
        top = margin if mark.corner.startswith("top") else height - margin - layer.height
        box = (left, top, left + layer.width, top + layer.height)
        region = im.crop(box).convert("RGBA")
        region.alpha_composite(layer)
        im.paste(region.convert(im.mode), box)
        out = io.BytesIO()
        im.save(out, format="PNG", pnginfo=chunks)
    return out.getvalue()


def mark_post(
    pngs: list[bytes], meta: dict[str, Any], mark: Watermark | None, row_value: str
) -> tuple[list[bytes], dict[str, Any]]:
    """The images to post and the metadata to record: marked when a mark is set and the row does not turn
    it off. The recorded ``sha256`` becomes the posted file's, the original's is kept beside it."""
    if mark is None or not row_wants_watermark(row_value) or not pngs:
        return pngs, meta
    marked = [apply_watermark(png, mark) for png in pngs]
    out = dict(meta)
    out.update(
        sha256=_sha(marked[0]),
        bytes=len(marked[0]),
        original_sha256=str(meta.get("sha256") or _sha(pngs[0])),
        watermark=mark.describe(),
    )
    if meta.get("variations"):
        out["variations"] = [
            {**v, "sha256": _sha(m), "original_sha256": str(v.get("sha256") or _sha(p))}
            for v, m, p in zip(meta["variations"], marked, pngs, strict=True)
        ]
    return marked, out


def _mark_layer(mark: Watermark, want_width: int, room: tuple[int, int]) -> Image.Image:
    """The mark as an RGBA image no wider than ``want_width`` and never larger than ``room``."""
    layer = (
        _text_layer(mark.text, want_width, room[1])
        if mark.text.strip()
        else _logo_layer(mark.logo, want_width, room[1])
    )
    if layer.width > room[0] or layer.height > room[1]:
        # a label of one pixel's font can still be wider than a 16 px image: cut, never overflow
        layer = layer.crop((0, 0, min(layer.width, room[0]), min(layer.height, room[1])))
    if mark.opacity < 1.0:
        alpha = layer.getchannel("A").point([round(a * mark.opacity) for a in range(256)])
        layer.putalpha(alpha)
    return layer


def _text_layer(text: str, want_width: int, max_height: int) -> Image.Image:
    # Pillow >= 10.1 ships a scalable default font (Aileron through FreeType): no font file to carry
    text = " ".join(text.split())
    x0, y0, x1, y1 = _font(_REFERENCE_PX).getbbox(text, stroke_width=_stroke(_REFERENCE_PX))
    scale = min(want_width / max(1, x1 - x0), max_height / max(1, y1 - y0))
    px = max(1, int(_REFERENCE_PX * scale))
    for _ in range(8):
        font, stroke = _font(px), _stroke(px)
        x0, y0, x1, y1 = font.getbbox(text, stroke_width=stroke)
        if px == 1 or (x1 - x0 <= want_width and y1 - y0 <= max_height):
            break
        # glyph metrics do not scale exactly with the size: shrink by the overshoot until it fits
        scale = min(want_width / max(1, x1 - x0), max_height / max(1, y1 - y0))
        px = max(1, min(px - 1, int(px * scale)))
    layer = Image.new("RGBA", (max(1, x1 - x0), max(1, y1 - y0)), (0, 0, 0, 0))
    # white with a dark outline reads on light and dark images alike
    ImageDraw.Draw(layer).text(
        (-x0, -y0),
        text,
        font=font,
        fill=(255, 255, 255, 255),
        stroke_width=stroke,
        stroke_fill=(0, 0, 0, 255),
    )
    return layer


def _logo_layer(logo: bytes | None, want_width: int, max_height: int) -> Image.Image:
    source = _open_logo(logo or b"")
    scale = min(want_width / source.width, max_height / source.height)
    size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
    return source.resize(size, Image.Resampling.LANCZOS)


def _open_logo(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGBA")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"the watermark logo cannot be decoded ({type(exc).__name__})") from None


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _stroke(px: int) -> int:
    return max(1, round(px / 16))


def _text_chunks(im: Image.Image) -> PngImagePlugin.PngInfo | None:
    # a generator's PNG text (A1111 writes its parameters there) survives when the post is a document
    chunks = getattr(im, "text", None) or {}
    if not chunks:
        return None
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(str(key), str(value))
    return info


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
