"""Product photos: one drawn product per category, damage drawn on it, on a lit background.

Drawn at twice the final size with PIL primitives and scaled down (cheap anti-aliasing). The
product sits at a random position, scale and tilt, in the story's colour (jittered), over a
gradient background with a texture and a drop shadow; lighting varies in level and direction.
A damaged product always shows it: dark jagged cracks, and often a missing chunk or a dent.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from synthetic.story import COLOURS, ItemStory

IMAGE_SIZE = 96
_SCALE = 2  # supersampling factor
_CANVAS = IMAGE_SIZE * _SCALE

# Light, muted backgrounds: a table, a wall, a floor.
BACKGROUND_PALETTE = (
    (225, 220, 210),
    (200, 210, 220),
    (190, 175, 150),
    (235, 235, 235),
    (170, 185, 170),
    (215, 195, 185),
    (160, 160, 170),
)
# image_shift=1 multiplies the channels by these (a warm, dim cast: an evening photo) ...
SHIFT_CHANNEL_GAIN = np.array([1.18, 0.97, 0.70])
# ... and lowers the overall lighting by this fraction.
SHIFT_DIMMING = 0.35

JPEG_QUALITY = 90
WEBP_QUALITY = 85
PNG_COMPRESS_LEVEL = 6


def _colour(rng: np.random.Generator, palette: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    base = np.array(palette[int(rng.integers(len(palette)))], dtype=float)
    return np.clip(base + rng.normal(0.0, 10.0, 3), 0, 255)


def _rgb(colour: np.ndarray, factor: float = 1.0, alpha: int = 255) -> tuple[int, int, int, int]:
    r, g, b = (int(v) for v in np.clip(colour * factor, 0, 255))
    return (r, g, b, alpha)


def draw_background(rng: np.random.Generator, size: int = _CANVAS) -> np.ndarray:
    """A size x size float RGB gradient background with a random texture (photos and clips)."""
    top, bottom = _colour(rng, BACKGROUND_PALETTE), _colour(rng, BACKGROUND_PALETTE)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    along = np.clip(0.5 + x * np.cos(angle) + y * np.sin(angle), 0.0, 1.0)[..., None]
    pixels = top * (1.0 - along) + bottom * along
    texture = int(rng.integers(4))
    if texture == 1:  # wood-like stripes
        period = rng.uniform(8.0, 20.0)
        pixels *= (1.0 + 0.05 * np.sin(2 * np.pi * (y * np.cos(angle) * size) / period))[..., None]
    elif texture == 2:  # fabric-like checks
        cell = int(rng.integers(6, 16))
        checks = (np.arange(size)[:, None] // cell + np.arange(size)[None] // cell) % 2
        pixels *= (1.0 + 0.04 * (checks - 0.5))[..., None]
    elif texture == 3:  # grain
        pixels += rng.normal(0.0, 6.0, (size, size, 1))
    return pixels


def _draw_mug(draw: ImageDraw.ImageDraw, c: np.ndarray, s: float) -> None:
    w, h = 50 * s, 62 * s
    x0, y0 = 96 - w / 2 - 8 * s, 96 - h / 2
    # Handle first, so the body covers its inner end.
    draw.ellipse(
        (x0 + w - 14 * s, y0 + 12 * s, x0 + w + 22 * s, y0 + h - 12 * s),
        outline=_rgb(c, 0.8),
        width=max(3, int(9 * s)),
    )
    draw.rectangle((x0, y0 + 6 * s, x0 + w, y0 + h - 6 * s), fill=_rgb(c))
    draw.ellipse((x0, y0 + h - 14 * s, x0 + w, y0 + h), fill=_rgb(c, 0.85))
    draw.ellipse((x0, y0, x0 + w, y0 + 14 * s), fill=_rgb(c, 1.1))
    draw.ellipse((x0 + 4 * s, y0 + 3 * s, x0 + w - 4 * s, y0 + 11 * s), fill=_rgb(c, 0.55))
    draw.rectangle((x0 + 8 * s, y0 + 16 * s, x0 + 14 * s, y0 + h - 14 * s), fill=_rgb(c, 1.25))


def _draw_shoe(draw: ImageDraw.ImageDraw, c: np.ndarray, s: float) -> None:
    def p(x: float, y: float) -> tuple[float, float]:
        return (96 + x * s, 96 + y * s)

    sole = [p(-62, 18), p(58, 18), p(64, 10), p(60, 4), p(-62, 6)]
    upper = [p(-60, 8), p(-58, -30), p(-38, -34), p(-28, -12), p(10, -8), p(46, -2), p(62, 6)]
    draw.polygon(upper, fill=_rgb(c))
    draw.polygon(sole, fill=(235, 235, 230, 255))
    draw.line([p(-60, 8), p(62, 8)], fill=_rgb(c, 0.7), width=max(2, int(3 * s)))
    for k in range(4):  # laces
        x = -22 + 10 * k
        draw.line(
            [p(x, -14 + 1.5 * k), p(x + 6, -6 + 1.5 * k)],
            fill=(245, 245, 245, 255),
            width=max(2, int(3 * s)),
        )
    draw.ellipse((*p(-56, -26), *p(-42, -14)), fill=_rgb(c, 0.75))


def _draw_lamp(draw: ImageDraw.ImageDraw, c: np.ndarray, s: float) -> None:
    def p(x: float, y: float) -> tuple[float, float]:
        return (96 + x * s, 96 + y * s)

    draw.ellipse((*p(-30, 50), *p(30, 64)), fill=_rgb(c, 0.8))
    draw.rectangle((*p(-4, -8), *p(4, 56)), fill=(120, 120, 125, 255))
    draw.polygon([p(-20, -62), p(20, -62), p(40, -8), p(-40, -8)], fill=_rgb(c))
    draw.polygon([p(-20, -62), p(-8, -62), p(-18, -8), p(-40, -8)], fill=_rgb(c, 1.2))
    draw.ellipse((*p(-10, -12), *p(10, 4)), fill=(255, 245, 190, 255))


def _draw_backpack(draw: ImageDraw.ImageDraw, c: np.ndarray, s: float) -> None:
    def p(x: float, y: float) -> tuple[float, float]:
        return (96 + x * s, 96 + y * s)

    width = max(3, int(6 * s))
    draw.arc((*p(-16, -70), *p(16, -38)), 180, 360, fill=_rgb(c, 0.7), width=width)
    draw.rounded_rectangle((*p(-38, -56), *p(38, 60)), radius=int(22 * s), fill=_rgb(c))
    draw.rounded_rectangle((*p(-26, 8), *p(26, 52)), radius=int(10 * s), fill=_rgb(c, 0.8))
    draw.line([p(-22, 14), p(22, 14)], fill=_rgb(c, 0.6), width=max(2, int(3 * s)))
    draw.line([p(-30, -50), p(-34, 50)], fill=_rgb(c, 0.75), width=width)
    draw.line([p(30, -50), p(34, 50)], fill=_rgb(c, 0.75), width=width)


def _draw_headphones(draw: ImageDraw.ImageDraw, c: np.ndarray, s: float) -> None:
    def p(x: float, y: float) -> tuple[float, float]:
        return (96 + x * s, 96 + y * s)

    draw.arc((*p(-50, -60), *p(50, 40)), 180, 360, fill=_rgb(c), width=max(4, int(11 * s)))
    for side in (-1, 1):
        x = 46 * side
        draw.rounded_rectangle(
            (*p(x - 14, -14), *p(x + 14, 34)), radius=int(10 * s), fill=_rgb(c, 0.9)
        )
        draw.rounded_rectangle(
            (*p(x - 8 * side - 5, -8), *p(x - 8 * side + 5, 28)),
            radius=int(4 * s),
            fill=(50, 50, 55, 255),
        )


PRODUCT_DRAWERS = {
    "mug": _draw_mug,
    "shoe": _draw_shoe,
    "lamp": _draw_lamp,
    "backpack": _draw_backpack,
    "headphones": _draw_headphones,
}


def _jagged_path(
    rng: np.random.Generator, start: tuple[float, float], steps: int, step: float
) -> list[tuple[float, float]]:
    heading = rng.uniform(0.0, 2.0 * np.pi)
    points = [start]
    for _ in range(steps):
        heading += rng.uniform(-1.1, 1.1)
        x, y = points[-1]
        points.append((x + step * math.cos(heading), y + step * math.sin(heading)))
    return points


def product_colour(story: ItemStory, rng: np.random.Generator) -> np.ndarray:
    """The story's colour, jittered a little per picture (as lighting and cameras do)."""
    jitter = rng.normal(0.0, 10.0, 3)
    return np.clip(np.array(COLOURS[story.colour], dtype=float) + jitter, 0, 255)


def draw_product(category: str, colour: np.ndarray, scale: float) -> Image.Image:
    """The product alone on a transparent _CANVAS x _CANVAS RGBA layer, centred."""
    layer = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    PRODUCT_DRAWERS[category](ImageDraw.Draw(layer), colour, scale)
    return layer


def light_map(rng: np.random.Generator, size: int = _CANVAS) -> np.ndarray:
    """Lighting over a size x size picture: a random level and direction (multiplier)."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    return rng.uniform(0.82, 1.12) * (
        1.0 + rng.uniform(0.05, 0.2) * (x * np.cos(angle) + y * np.sin(angle))
    )


def apply_image_shift(scene: np.ndarray, image_shift: float) -> np.ndarray:
    """The image_shift drift on float RGB pixels: a warm colour cast and dimming."""
    return (
        scene
        * (1.0 + image_shift * (SHIFT_CHANNEL_GAIN - 1.0))
        * (1.0 - SHIFT_DIMMING * image_shift)
    )


def draw_damage(
    layer: Image.Image, rng: np.random.Generator, colour: np.ndarray, stroke: int = 1
) -> None:
    """Cracks always; a missing chunk and a dent often. Drawn only where the product is.

    `stroke` multiplies the line widths (the same draws): clips use 2, as their frames are
    scaled down further and squeezed as the product turns."""
    alpha = np.asarray(layer.getchannel("A"))
    ys, xs = np.nonzero(alpha > 200)
    draw = ImageDraw.Draw(layer)
    # Cracks are far darker than the product's own colour, whatever that colour is.
    crack = _rgb(colour, rng.uniform(0.1, 0.3))
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(xs.size))
        path = _jagged_path(
            rng, (float(xs[k]), float(ys[k])), int(rng.integers(5, 9)), rng.uniform(5.0, 9.0)
        )
        draw.line(path, fill=crack, width=int(rng.integers(3, 5)) * stroke)
        branch_at = path[int(rng.integers(1, len(path)))]
        draw.line(_jagged_path(rng, branch_at, 3, 5.0), fill=crack, width=2 * stroke)
    if rng.random() < 0.5:
        # Missing chunk: a jagged bite out of the product edge, with a dark broken rim.
        k = int(np.argmax(xs + rng.uniform(-40, 40, xs.size)))
        cx, cy = float(xs[k]), float(ys[k])
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, 9))
        radii = rng.uniform(8.0, 18.0, 9)
        bite = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)
        ]
        draw.polygon(bite, fill=(0, 0, 0, 0), outline=crack, width=3 * stroke)
    if rng.random() < 0.3:
        k = int(rng.integers(xs.size))
        r = rng.uniform(6.0, 11.0)
        draw.ellipse(
            (xs[k] - r, ys[k] - r * 0.7, xs[k] + r, ys[k] + r * 0.7),
            fill=_rgb(colour, 0.5),
            outline=crack,
            width=2 * stroke,
        )
    # The chunk must stay transparent where it was cut: re-apply the product mask.
    cut = np.asarray(layer.getchannel("A"))
    layer.putalpha(Image.fromarray(np.where(alpha > 0, cut, 0).astype(np.uint8)))


def render_photo(story: ItemStory, rng: np.random.Generator, image_shift: float) -> Image.Image:
    """The item's product photo, IMAGE_SIZE x IMAGE_SIZE RGB."""
    background = draw_background(rng)
    colour = product_colour(story, rng)
    layer = draw_product(story.category, colour, rng.uniform(0.75, 1.1))
    # Without a clip this is the damage; some damaged items with a clip show the intact side
    # in the photo and the damage only in the clip (story.ClipStory.photo_shows_damage).
    if story.photo_shows_damage:
        draw_damage(layer, rng, colour)
    layer = layer.rotate(rng.uniform(-18.0, 18.0), resample=Image.Resampling.BICUBIC)
    offset = (int(rng.integers(-12, 13)), int(rng.integers(-12, 13)))

    # Soft drop shadow below the product.
    shadow_alpha = layer.getchannel("A").filter(ImageFilter.GaussianBlur(6))
    shadow = np.asarray(shadow_alpha, dtype=float)[..., None] / 255.0 * 0.35
    shadow = np.roll(shadow, (offset[1] + 6, offset[0] + 4), axis=(0, 1))
    scene = background * (1.0 - shadow)
    product = np.roll(np.asarray(layer, dtype=float), (offset[1], offset[0]), axis=(0, 1))
    cover = product[..., 3:4] / 255.0
    scene = scene * (1.0 - cover) + product[..., :3] * cover

    # Lighting: a level and a direction, then the drift's colour cast and dimming.
    scene = apply_image_shift(scene * light_map(rng)[..., None], image_shift)
    full = Image.fromarray(np.clip(np.round(scene), 0, 255).astype(np.uint8), "RGB")
    return full.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Encode with fixed settings and no metadata, so the bytes depend only on the pixels."""
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=0)
    elif image_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    elif image_format == "webp":
        image.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=4, lossless=False)
    else:
        raise ValueError(f"unknown image format {image_format!r}; use jpg, png or webp")
    return buffer.getvalue()
