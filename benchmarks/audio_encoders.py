"""Which audio encoder hears real speech: the packaged Whisper encoder beside log-mel
statistics (what a linear baseline sees), on real recordings, in one run.

The recordings are Asterisk's telephone prompts (8 kHz, CC-BY-SA-3.0) that `make
real-audio` unpacks from Debian's packages: four speakers (en_US Allison, fr_CA June,
it_IT Carlo and it_IT_f Menardi), the two Italian ones reading the same prompts.

- **same prompt, other speaker** (what is said): for each of Carlo's recordings, is
  Menardi's recording of the same prompt the nearest of all her recordings (R@1, R@5;
  each speaker's features centred on their own mean, cosine similarity)?
- **language** (en / fr / it, four speakers): a logistic regression on each feature,
  trained on the prompts whose name hashes to train, scored on the others.
- **cost**: encoding time per clip (2-core CPU), Whisper vs the statistics.

Each clip is decoded and preprocessed by the platform's own code (`AudioSpec`), Whisper
through the platform's trunk (`WhisperTrunk`, frozen, no cache).

    .venv/bin/python benchmarks/audio_encoders.py            # ~2 min on 2 cores
    .venv/bin/python benchmarks/audio_encoders.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))

SOUNDS = REPO / ".cache/real-audio/usr/share/asterisk/sounds"
SPEAKERS = {"en_US_f_Allison": "en", "fr_CA_f_June": "fr", "it_IT_m_Carlo": "it",
            "it_IT_f_Menardi": "it"}  # fmt: skip


def log(message: str) -> None:
    print(f"[audio_encoders {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Features:
    """Both encodings of recordings, with the time each took (after decoding)."""

    def __init__(self, clip_s: float) -> None:
        import torch

        from dualmedia.modalities import MediaBounds, MediaConfig
        from dualmedia.modalities.audio import SPEC, WHISPER_TINY_EN, AudioEncoder
        from dualmedia.modalities.trunks.audio import WhisperTrunk

        torch.set_num_threads(2)
        self.spec, self.bounds = SPEC, MediaBounds().audio
        self.whisper_media = MediaConfig.model_validate({"audio": {"clip_s": clip_s}})
        self.logmel_media = MediaConfig.model_validate(
            {"audio": {"features": "logmel", "sample_rate": 8000, "n_fft": 256, "clip_s": clip_s}}
        )
        encoder = AudioEncoder(pretrained=WHISPER_TINY_EN, trainable_layers=0)
        self.trunk = WhisperTrunk(encoder, self.whisper_media).eval()
        self.trunk.cache_outputs = False
        self.seconds = {"whisper": 0.0, "logmel statistics": 0.0}

    def accepted(self, path: Path) -> bool:
        """Whether ingestion accepts the recording (a few prompts last over 30 s)."""
        from dualmedia.modalities import MediaError

        try:
            self.spec.decode(path.read_bytes(), self.bounds)
        except MediaError:
            return False
        return True

    def __call__(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """[N, 384] Whisper (in batches of 32, as training runs it) and [N, 160] statistics."""
        import torch

        decoded = [self.spec.decode(path.read_bytes(), self.bounds) for path in paths]
        start = time.perf_counter()
        pooled = []
        for first in range(0, len(decoded), 32):
            chunk = [
                self.spec.preprocess(d, self.whisper_media) for d in decoded[first : first + 32]
            ]
            with torch.no_grad():
                pooled.append(self.trunk(self.spec.collate(chunk, self.whisper_media)).numpy())
        middle = time.perf_counter()
        from dualmedia.modalities.audio import logmel_statistics

        stats = [logmel_statistics(self.spec.preprocess(d, self.logmel_media)) for d in decoded]
        self.seconds["whisper"] += middle - start
        self.seconds["logmel statistics"] += time.perf_counter() - middle
        return np.concatenate(pooled), np.array(stats)


def recall(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of rows of `b` whose own row of `a` is among its k nearest (cosine)."""
    a, b = (x - x.mean(0) for x in (a, b))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    ranks = np.argsort(-(b @ a.T), axis=1)[:, :k]
    return float(np.mean([i in row for i, row in enumerate(ranks)]))


def language_accuracy(x: np.ndarray, language: np.ndarray, test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    model.fit(x[~test], language[~test])
    return float((model.predict(x[test]) == language[test]).mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not SOUNDS.is_dir():
        raise SystemExit(f"{SOUNDS} is missing: run `make real-audio`")
    features = Features(args.clip_s)
    her, him = SOUNDS / "it_IT_f_Menardi", SOUNDS / "it_IT_m_Carlo"
    both = [
        p.relative_to(her)
        for p in sorted(her.rglob("*.wav"))
        if (him / p.relative_to(her)).exists()
    ]
    prompts = [p for p in both if features.accepted(her / p) and features.accepted(him / p)]
    prompts = prompts[: args.prompts]
    log(f"{len(prompts)} prompts read by both Italian speakers")
    pairs = [features([folder / p for p in prompts]) for folder in (her, him)]
    names = ("whisper", "logmel statistics")
    same_prompt = {
        name: {f"R@{k}": recall(pairs[0][i], pairs[1][i], k) for k in (1, 5)}
        for i, name in enumerate(names)
    }
    log("same prompt, other speaker: done; language identification next")
    paths, language = [], []
    for folder, lang in SPEAKERS.items():
        for path in sorted((SOUNDS / folder).rglob("*.wav"))[:: args.every]:
            if features.accepted(path):
                paths.append(path)
                language.append(lang)
    rows = features(paths)
    language_arr = np.array(language)
    test_arr = np.array([zlib.crc32(p.stem.encode()) % 4 == 0 for p in paths])
    languages = {
        name: language_accuracy(rows[i], language_arr, test_arr) for i, name in enumerate(names)
    }
    clips = 2 * len(prompts) + len(paths)
    per_clip_ms = {name: 1000 * features.seconds[name] / clips for name in names}
    return {
        "prompts": len(prompts),
        "chance_R@1": 1 / len(prompts),
        "same_prompt_other_speaker": same_prompt,
        "language_items": {"train": int((~test_arr).sum()), "test": int(test_arr.sum())},
        "language_accuracy": languages,
        "encode_ms_per_clip": per_clip_ms,
        "whisper_cost_ratio": per_clip_ms["whisper"] / per_clip_ms["logmel statistics"],
        "clip_s": args.clip_s,
    }


def print_table(result: dict[str, Any]) -> None:
    items = result["language_items"]["test"]
    print(f"\nReal telephone speech: {result['prompts']} Italian prompts read by a man and a")
    print(f"woman; language over 4 speakers, {items} test clips\n")
    print("| encoder | same prompt, other speaker R@1 | R@5 | language accuracy | ms / clip |")
    print("|---|---|---|---|---|")
    for name in ("whisper", "logmel statistics"):
        recalls = result["same_prompt_other_speaker"][name]
        language, ms = result["language_accuracy"][name], result["encode_ms_per_clip"][name]
        print(
            f"| {name} | {recalls['R@1']:.3f} | {recalls['R@5']:.3f} | {language:.3f} | {ms:.1f} |"
        )
    ratio = result["whisper_cost_ratio"]
    print(f"\nchance R@1 {result['chance_R@1']:.3f}; Whisper costs {ratio:.1f}x the statistics")
    print(f"per clip ({result['clip_s']} s clips)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=300, help="Italian prompts compared")
    parser.add_argument("--every", type=int, default=3, help="every Nth recording for language")
    parser.add_argument("--clip-s", type=float, default=2.0, help="clip length (s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
