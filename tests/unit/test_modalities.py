"""The modality registry: one module per modality, bounds from the header before decoding,
the same refusals in ingestion and serving, and the one batch builder."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageFile

from dualmedia import modalities
from dualmedia.contract import ContractError, Modality, RejectReason, parse_dataset_spec
from dualmedia.modalities import MediaBounds, MediaConfig, MediaError
from dualmedia.modalities.audio import SILENCE
from dualmedia.modalities.batch import assemble_batch
from serving.protocol import BadRequest, parse_request
from synthetic.traffic import flac_silence, png_bomb

BOUNDS = MediaBounds()
MEDIA = MediaConfig()


def test_the_registry_knows_each_modality_once_in_canonical_order() -> None:
    assert modalities.names() == ["text", "image", "audio", "video"]
    assert [m.value for m in Modality] == modalities.names()
    # Every modality's reasons are contract reasons (the generator and ingestion share them).
    reasons = {r.value for r in RejectReason}
    assert all(set(spec.reasons) <= reasons for spec in modalities.specs())
    assert modalities.ordered(["audio", "text"]) == ["text", "audio"]


def test_an_unknown_modality_is_a_clear_error_not_a_fallback() -> None:
    with pytest.raises(modalities.UnknownModality, match=r"'smell'.*known: text, image, audio"):
        modalities.get("smell")
    with pytest.raises(ContractError, match=r"modalities\.1"):
        parse_dataset_spec("name: x\nmodalities: [text, smell]\n")


def test_a_huge_image_is_refused_from_its_header_before_any_pixel_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(MediaError) as info:
        modalities.get("image").decode(png_bomb(9000, 9000), BOUNDS.image)
    assert info.value.reason == "image_size_out_of_bounds"
    assert "9000x9000" in str(info.value)


def test_a_long_clip_is_refused_from_its_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = flac_silence(600)  # 600 s of silence compresses to a small file
    assert len(data) < 2_000_000

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(MediaError) as info:
        modalities.get("audio").decode(data, BOUNDS.audio)
    assert info.value.reason == "audio_too_long"
    assert "from its header" in str(info.value)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_image_formats_outside_the_contract_are_refused_by_content(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format=fmt)
    with pytest.raises(MediaError) as info:
        modalities.get("image").decode(buffer.getvalue(), BOUNDS.image)
    assert info.value.reason == "image_format_not_supported"
    # The endpoints refuse it with the same reason, naming the field.
    body = {"image": base64.b64encode(buffer.getvalue()).decode()}
    with pytest.raises(BadRequest) as served:
        parse_request("embed", {"body": body}, MEDIA, ["text"], BOUNDS)
    assert (served.value.status, served.value.error, served.value.field) == (
        400,
        "image_format_not_supported",
        "image",
    )


def test_audio_formats_outside_the_contract_are_refused_by_content() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(np.arange(8000) / 5.0), 8000, format="AIFF")
    with pytest.raises(MediaError) as info:
        modalities.get("audio").decode(buffer.getvalue(), BOUNDS.audio)
    assert info.value.reason == "audio_format_not_supported"


def _word(seconds: float, rate: int = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_real_short_words_and_small_images_are_accepted_by_default() -> None:
    audio = modalities.get("audio").decode(_word(0.15), BOUNDS.audio)  # a short spoken digit
    assert audio.duration_s == pytest.approx(0.15)
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="PNG")  # an 8 x 8 scan
    image = modalities.get("image").decode(buffer.getvalue(), BOUNDS.image)
    assert (image.width, image.height) == (8, 8)


def test_ingestion_and_serving_accept_and_refuse_the_same_clip() -> None:
    """One bounds object: what the dataset sets applies to its model's endpoints too."""
    spec = parse_dataset_spec(
        "name: x\nmodalities: [text, audio]\nbounds: {audio: {min_duration_s: 0.5}}\n"
    )
    bounds = spec.media_bounds()
    short = _word(0.3)
    with pytest.raises(MediaError) as ingested:
        modalities.get("audio").decode(short, bounds.audio)
    body = {"audio": base64.b64encode(short).decode()}
    with pytest.raises(BadRequest) as served:
        parse_request("embed", {"body": body}, MEDIA, ["text"], bounds)
    assert ingested.value.reason == served.value.error == "audio_too_short"
    # The default bounds accept it on both sides, with the same raw-field statistics.
    decoded = modalities.get("audio").decode(short, BOUNDS.audio)
    request = parse_request("embed", {"body": body}, MEDIA, ["text"], BOUNDS)
    assert request.inputs.stats == modalities.get("audio").stats(decoded)


def test_a_typo_in_a_dataset_bound_names_the_field() -> None:
    with pytest.raises(ContractError, match=r"bounds.*audio.min_durtion_s"):
        parse_dataset_spec("name: x\nmodalities: [audio]\nbounds: {audio: {min_durtion_s: 1}}\n")


def test_the_batch_builder_pads_missing_items_and_marks_presence() -> None:
    rng = np.random.default_rng(0)
    audio = modalities.get("audio").random_input(MEDIA, rng)
    items = [{"text": "a mug", "audio": audio}, {"text": None, "image": None}]
    batch = assemble_batch(items, ["text", "image", "audio"], MEDIA)
    assert batch["present"]["text"].tolist() == [True, False]
    assert batch["present"]["image"].tolist() == [False, False]
    assert batch["present"]["audio"].tolist() == [True, False]
    logmel = batch["inputs"]["audio"]["logmel"]
    assert logmel.shape == (2, MEDIA.audio.n_mels, MEDIA.audio.frames)
    assert float(logmel[1].max()) == pytest.approx(SILENCE)  # padding is silence
    assert batch["inputs"]["image"].shape == (2, MEDIA.image.size, MEDIA.image.size, 3)


def test_snapshot_records_round_trip_through_each_modality() -> None:
    rng = np.random.default_rng(1)
    for spec in modalities.specs():
        item = spec.random_input(MEDIA, rng)
        back = spec.from_record(spec.to_record(item), MEDIA)
        if isinstance(item, dict):
            assert all(
                np.allclose(np.asarray(back[k]), np.asarray(v), atol=1e-2) for k, v in item.items()
            )
        else:
            assert np.array_equal(np.asarray(back), np.asarray(item))


def test_audio_preprocessing_follows_the_recordings() -> None:
    audio = modalities.get("audio")
    # Telephone words: 8 kHz, 0.3-0.9 s.
    words = [{"audio_sample_rate": 8000.0, "audio_duration_s": 0.3 + i / 100} for i in range(60)]
    # Whisper's front end (the default) is fixed: only the clip follows the recordings.
    assert audio.derive_media(words) == {"clip_s": 1.0}
    logmel = {"features": "logmel"}
    assert audio.derive_media(words, logmel) == {
        "sample_rate": 8000,  # not upsampled: no empty bands above 4 kHz
        "n_fft": 256,  # 32 ms window, 20 ms hop, as at 16 kHz
        "hop_length": 160,
        "clip_s": 1.0,  # not 4 s of mostly padding
    }
    notes = [{"audio_sample_rate": 44100.0, "audio_duration_s": 1.0 + i / 10} for i in range(60)]
    derived = audio.derive_media(notes, logmel)
    assert derived["sample_rate"] == 16000 and derived["hop_length"] == 320
    assert derived["clip_s"] == 4.0  # long recordings: the default cap
    assert audio.derive_media([]) == {}
    assert modalities.get("image").derive_media(words) == {}  # no picture among them


def picture_stats(width: int, height: int) -> dict[str, float]:
    return {"image_width": float(width), "image_height": float(height)}


def test_picture_size_follows_the_pictures() -> None:
    image = modalities.get("image")
    scans = [picture_stats(8, 8)] * 50
    assert image.derive_media(scans) == {"size": 32}  # not 64 x 64 of 8 x 8 pixels
    thumbnails = [picture_stats(40 + i % 5, 60) for i in range(50)]
    assert image.derive_media(thumbnails) == {"size": 48}  # the median shorter side, up to 16s
    photos = [picture_stats(640, 480)] * 50
    assert image.derive_media(photos) == {"size": MediaConfig().image.size}  # at most 64
    assert image.derive_media([]) == {}


@pytest.mark.parametrize("size", [32, 48, 64])
def test_a_vit_from_scratch_cuts_any_derived_size_into_8_by_8_patches(size: int) -> None:
    import torch

    from dualmedia.modalities.trunks.image import ImageTrunk

    config = modalities.get("image").Encoder(
        pretrained=None, trainable_layers=None, hidden_size=32, num_layers=1, num_heads=2
    )
    assert config.patch_size is None  # follows the picture
    trunk = ImageTrunk(config, size)
    assert trunk.model.config.patch_size == size // 8
    pixels = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    assert trunk(pixels).shape == (2, 32)
    stated = config.model_copy(update={"patch_size": 16})
    assert ImageTrunk(stated, size).model.config.patch_size == 16  # a config may set it
