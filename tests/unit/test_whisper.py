"""The packaged Whisper tiny.en encoder: the features are Whisper's (as transformers'
feature extractor computes them), the encoder read from the CTranslate2 file is the same
network as transformers' WhisperEncoder with those weights, and the audio trunk loads it
by `pretrained:` (frozen, saved without it, refusing a snapshot of other features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from dualmedia.contract import DatasetSpec
from dualmedia.modalities import MediaConfig, audio
from dualmedia.modalities.trunks import whisper
from dualmedia.modalities.trunks.whisper import WhisperAudioEncoder, read_ctranslate2
from training.config import REPO_CONFIGS, load_train_config
from training.models.factory import build_fused_model, load_fused_model_dir, save_fused_model

WHISPER_MEDIA = MediaConfig.model_validate({"audio": {"features": "whisper", "clip_s": 1.5}})


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, amplitude-modulated tone with a little noise (level changes over time)."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (voiced + 0.01 * rng.normal(size=t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def network() -> WhisperAudioEncoder:
    return WhisperAudioEncoder.from_package()


def test_the_features_are_whispers() -> None:
    x = speech_like(2.0)
    expected = WhisperFeatureExtractor()(x, sampling_rate=16000, return_tensors="np")
    config = audio.AudioPreprocess(features="whisper", clip_s=30.0)
    ours, valid = audio.log_mel(audio.DecodedAudio(x, 16000), config)
    assert valid == 201  # 2 s at a 10 ms hop, and the frame centred on the last sample
    reference = expected.input_features[0][:, :valid]
    np.testing.assert_allclose(ours[:, :valid], reference, atol=1e-4)
    # Padding is the clamp floor, as Whisper sees after any utterance under 30 s.
    assert np.all(ours[:, valid:] == ours.min())


def test_whisper_features_fix_the_front_end_and_refuse_another() -> None:
    config = audio.AudioPreprocess.model_validate({"features": "whisper", "hop_length": 160})
    assert (config.sample_rate, config.n_fft, config.hop_length, config.n_mels) == (
        16000, 400, 160, 80)  # fmt: skip
    assert config.frames == 400  # 4 s: one frame per hop, as Whisper (30 s: 3000)
    with pytest.raises(ValueError, match="sample_rate: 8000 does not apply"):
        audio.AudioPreprocess.model_validate({"sample_rate": 8000})
    assert audio.AudioPreprocess().n_mels == 80  # Whisper's features are the default
    logmel = audio.AudioPreprocess(features="logmel", sample_rate=8000)
    assert (logmel.sample_rate, logmel.n_mels, logmel.spec_augment) == (8000, 64, True)
    assert not config.spec_augment  # a frozen encoder's outputs are cached per clip


def test_the_encoder_is_transformers_whisper_encoder_with_those_weights(
    network: WhisperAudioEncoder,
) -> None:
    ct2 = read_ctranslate2(whisper.checkpoint_path(), "encoder/")
    reference = WhisperEncoder(
        WhisperConfig(
            num_mel_bins=80,
            d_model=384,
            encoder_layers=4,
            encoder_attention_heads=6,
            encoder_ffn_dim=1536,
        )
    ).eval()
    state = {"embed_positions.weight": ct2["encoder/position_encodings/encodings"],
             "layer_norm.weight": ct2["encoder/layer_norm/gamma"],
             "layer_norm.bias": ct2["encoder/layer_norm/beta"]}  # fmt: skip
    for conv in ("conv1", "conv2"):
        state |= {f"{conv}.{p}": ct2[f"encoder/{conv}/{p}"] for p in ("weight", "bias")}
    for i in range(whisper.LAYERS):
        ours, theirs = f"layers.{i}.", f"encoder/layer_{i}/"
        q, k, v = np.split(ct2[theirs + "self_attention/linear_0/weight"], 3)
        qb, kb, vb = np.split(ct2[theirs + "self_attention/linear_0/bias"], 3)
        assert not kb.any()  # Whisper's key projection has no bias
        state |= {
            ours + "self_attn.q_proj.weight": q, ours + "self_attn.q_proj.bias": qb,
            ours + "self_attn.k_proj.weight": k,
            ours + "self_attn.v_proj.weight": v, ours + "self_attn.v_proj.bias": vb,
            ours + "self_attn.out_proj.weight": ct2[theirs + "self_attention/linear_1/weight"],
            ours + "self_attn.out_proj.bias": ct2[theirs + "self_attention/linear_1/bias"],
            ours + "self_attn_layer_norm.weight": ct2[theirs + "self_attention/layer_norm/gamma"],
            ours + "self_attn_layer_norm.bias": ct2[theirs + "self_attention/layer_norm/beta"],
            ours + "final_layer_norm.weight": ct2[theirs + "ffn/layer_norm/gamma"],
            ours + "final_layer_norm.bias": ct2[theirs + "ffn/layer_norm/beta"],
            ours + "fc1.weight": ct2[theirs + "ffn/linear_0/weight"],
            ours + "fc1.bias": ct2[theirs + "ffn/linear_0/bias"],
            ours + "fc2.weight": ct2[theirs + "ffn/linear_1/weight"],
            ours + "fc2.bias": ct2[theirs + "ffn/linear_1/bias"],
        }  # fmt: skip
    reference.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()})
    features = WhisperFeatureExtractor()(speech_like(3.0), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected = reference(input_features=features.input_features).last_hidden_state
        got = network(input_features=features.input_features).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # A short clip takes the first positions (1.5 s: 75 tokens), as whisper.cpp does.
    short = torch.from_numpy(audio.log_mel(audio.DecodedAudio(speech_like(1.5), 16000),
                                           WHISPER_MEDIA.audio)[0])[None]  # fmt: skip
    with torch.no_grad():
        assert network(input_features=short).last_hidden_state.shape == (1, 75, whisper.WIDTH)


def spec() -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "t",
            "modalities": ["text", "audio"],
            "labels": {"category": {"type": "categorical", "classes": ["a", "b"]}},
        }
    )


def whisper_config() -> object:
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    config.encoders.audio = config.encoders.audio.model_copy(
        update={"pretrained": audio.WHISPER_TINY_EN, "trainable_layers": 0}
    )
    return config


def test_the_audio_trunk_loads_it_frozen_pools_the_audio_and_saves_without_it(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = build_fused_model(spec(), WHISPER_MEDIA, whisper_config()).eval()
    trunk = model.encoder.trunk("audio")
    assert trunk.hidden_size == whisper.WIDTH and trunk.frozen()
    clips = [speech_like(0.6, seed=1), speech_like(1.2, seed=2)]
    items = [audio.SPEC.preprocess(audio.DecodedAudio(x, 16000), WHISPER_MEDIA) for x in clips]
    batch = audio.SPEC.collate(items, WHISPER_MEDIA)
    assert batch["logmel"].shape == (2, 80, 150)
    saved = save_fused_model(model, tmp_path)
    weights = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert weights < 5_000_000, (saved, weights)  # the 75 MB checkpoint is not copied
    loaded = load_fused_model_dir(tmp_path).eval()
    with torch.no_grad():
        pooled = trunk(batch)
        torch.testing.assert_close(loaded.encoder.trunk("audio")(batch), pooled)
        # The mean is over the tokens that hold audio: the first clip alone, padded to the
        # same window, pools the same tokens of the same network.
        hidden = trunk.model(input_features=batch["logmel"][:1]).last_hidden_state
        valid_tokens = (int(batch["valid_frames"][0]) + 1) // 2
        torch.testing.assert_close(pooled[0], hidden[0, :valid_tokens].mean(0))
    # Frozen: a clip seen once is never encoded again (epochs after the first are free).
    runs: list[int] = []
    trunk.model.register_forward_hook(lambda *_: runs.append(1))
    assert trunk.cache_size() == 2
    torch.testing.assert_close(trunk(batch), pooled)
    assert runs == []
    other = audio.SPEC.collate([items[1], items[0]], WHISPER_MEDIA)
    other["logmel"][0, :, 0] += 1.0  # a clip not seen before
    trunk(other)
    assert runs == [1] and trunk.cache_size() == 3


def test_a_snapshot_of_other_features_is_refused_with_what_to_set() -> None:
    logmel = MediaConfig.model_validate({"audio": {"features": "logmel"}})
    with pytest.raises(ValueError, match="features: whisper"):
        build_fused_model(spec(), logmel, whisper_config())


def test_a_server_loads_it_from_the_saved_model_and_keeps_no_cache(tmp_path: Path) -> None:
    import base64
    import io

    import soundfile as sf

    from serving.protocol import parse_request
    from serving.runtime import InferenceRuntime
    from training.models.scoring import embed_items

    torch.manual_seed(0)
    model = build_fused_model(spec(), WHISPER_MEDIA, whisper_config()).eval()
    save_fused_model(model, tmp_path)
    runtime = InferenceRuntime.from_folder(tmp_path, "1")
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(0.8, rate=8000), 8000, format="WAV")  # telephone rate
    body = {"audio": base64.b64encode(buffer.getvalue()).decode()}
    request = parse_request("embed", {"body": body}, runtime.media, [], runtime.bounds)
    served = runtime.answer("embed", [request])[0]
    expected = embed_items(model, [request.inputs.items])[0]["audio"][0]  # in process
    assert served["modality"] == "audio"
    np.testing.assert_allclose(served["embedding"], expected, atol=1e-5)
    assert runtime.model.encoder.trunk("audio").cache_size() == 0  # a server must not grow


def test_a_snapshot_or_model_recorded_before_whisper_features_loads_as_log_mel() -> None:
    today = MediaConfig().to_dict()
    assert MediaConfig.from_recorded(today) == MediaConfig()  # whisper, round trip
    older = {**today, "audio": {k: v for k, v in today["audio"].items()
                                if k not in ("features", "spec_augment")}}  # fmt: skip
    older["audio"].update(n_mels=64, n_fft=512, hop_length=320)  # what they recorded
    recorded = MediaConfig.from_recorded(older).audio
    assert (recorded.features, recorded.n_mels, recorded.hop_length) == ("logmel", 64, 320)
    assert recorded.spec_augment  # as they trained
    # A dataset.yaml's partial section is not a record: a missing field is today's default.
    assert MediaConfig.from_dict({"audio": {"clip_s": 2.0}}).audio.features == "whisper"


def test_from_scratch_every_layer_trains_whatever_the_modalitys_default() -> None:
    scratch = audio.AudioEncoder(pretrained=None)
    assert scratch.trainable_layers is None  # not the packaged encoder's frozen default
    assert audio.AudioEncoder().trainable_layers == 0  # Whisper, frozen
    with pytest.raises(ValueError, match="applies to a pretrained encoder"):
        audio.AudioEncoder(pretrained=None, trainable_layers=0)
