"""The model behind the endpoints, runnable in-process or inside a TorchServe worker.

One `InferenceRuntime` answers a batch of validated requests (serving.protocol) for
one task. The TorchServe handler is a thin adapter over it, and the benchmark and
tests call it directly to compare the served answers with the in-process model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dualmedia.contract import Modality
from dualmedia.media import MediaConfig
from serving.catalogue import Catalogue
from serving.protocol import Inputs, Request

# A modality's own prediction counts in a disagreement only when it is this sure, and
# only on labels its own head predicts well on held-out data (macro-F1, archive.json).
DISAGREEMENT_CONFIDENCE = 0.6
RELIABLE_F1 = 0.6


class InferenceRuntime:
    def __init__(
        self,
        model: Any,
        catalogue: Catalogue | None,
        model_version: str,
        threads: int = 1,
        reliability: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.model = model.eval()
        self.reliability = reliability
        if "text" in getattr(model, "modalities", []):
            model.encoder.trunk("text").cache_texts = False  # a server must not grow
        self.media: MediaConfig = model.media
        self.catalogue = catalogue
        self.model_version = model_version
        # The worker's whole CPU budget: torch's threads and the BLAS numpy uses for
        # the log-mel (OpenBLAS ignores torch's setting and would take every core, so
        # two workers would oversubscribe the machine).
        torch.set_num_threads(max(1, threads))
        threadpool_limits(limits=max(1, threads))

    @classmethod
    def from_folder(cls, folder: Path, model_version: str, threads: int = 1) -> InferenceRuntime:
        """Load an unpacked archive: weights.safetensors + model.json, and catalogue/."""
        from training.factory import load_fused_model_dir

        folder = Path(folder)
        model = load_fused_model_dir(folder)
        catalogue_dir = folder / "catalogue"
        catalogue = Catalogue.load(catalogue_dir) if catalogue_dir.exists() else None
        if (folder / "tokenizer").exists() and "text" in model.modalities:
            from transformers import AutoTokenizer

            # The tokenizer archived with the model, not whatever the environment has.
            model.encoder.trunk("text").tokenizer = AutoTokenizer.from_pretrained(
                str(folder / "tokenizer"), local_files_only=True
            )
        info_path = folder / "archive.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        return cls(model, catalogue, model_version, threads, info.get("reliability"))

    @property
    def modalities(self) -> list[Modality]:
        return [Modality(m) for m in self.model.modalities]

    def catalogue_modalities(self) -> list[Modality]:
        if self.catalogue is None:
            return []
        return [Modality(m) for m in self.catalogue.modalities]

    # ---- batching ----------------------------------------------------------------------
    def _batch(self, items: list[Inputs]) -> dict[str, Any]:
        n = len(items)
        size = self.media.image_size
        image = np.zeros((n, size, size, 3), dtype=np.uint8)
        audio = np.full((n, self.media.n_mels, self.media.audio_frames), np.log(1e-6), np.float32)
        for i, x in enumerate(items):
            if x.image is not None:
                image[i] = x.image
            if x.audio is not None:
                audio[i] = x.audio
        present = {
            Modality.TEXT.value: [x.text is not None for x in items],
            Modality.IMAGE.value: [x.image is not None for x in items],
            Modality.AUDIO.value: [x.audio is not None for x in items],
        }
        return {
            "text": [x.text for x in items],
            "image": torch.from_numpy(image),
            "audio": torch.from_numpy(audio),
            "present": {
                m: torch.tensor(present[m], dtype=torch.bool) for m in self.model.modalities
            },
        }

    def _check_modalities(self, items: list[Inputs]) -> None:
        served = {m.value for m in self.modalities}
        for x in items:
            for m in x.modalities:
                if m.value not in served:
                    raise ValueError(f"this model has no {m.value} encoder")

    @torch.inference_mode()
    def embed_inputs(self, items: list[Inputs]) -> dict[str, np.ndarray]:
        """Per modality, [N, D] embeddings of every item (zero rows where absent)."""
        self._check_modalities(items)
        out = self.model.encoder(self._batch(items))
        return {m: e.float().numpy() for m, e in out.items()}

    # ---- tasks ----------------------------------------------------------------------------
    def embed(self, requests: list[Request]) -> list[dict[str, Any]]:
        embeddings = self.embed_inputs([r.inputs for r in requests])
        answers = []
        for i, r in enumerate(requests):
            modality = r.inputs.modalities[0].value
            vector = embeddings[modality][i]
            answers.append(
                {
                    "modality": modality,
                    "dim": int(vector.shape[0]),
                    "embedding": [round(float(v), 6) for v in vector],
                    "model_version": self.model_version,
                }
            )
        return answers

    def search(self, requests: list[Request]) -> list[dict[str, Any]]:
        if self.catalogue is None:
            raise ValueError("this model was archived without a search catalogue")
        embeddings = self.embed_inputs([r.inputs for r in requests])
        answers = []
        for i, r in enumerate(requests):
            modality = r.inputs.modalities[0].value
            assert r.target is not None
            results = self.catalogue.search(embeddings[modality][i], r.target.value, r.k)
            answers.append(
                {
                    "query_modality": modality,
                    "target": r.target.value,
                    "results": results,
                    "model_version": self.model_version,
                }
            )
        return answers

    @torch.inference_mode()
    def insights(self, requests: list[Request]) -> list[dict[str, Any]]:
        items = [r.inputs for r in requests]
        self._check_modalities(items)
        out = self.model(self._batch(items))
        probs = {name: torch.softmax(v.float(), dim=1).numpy() for name, v in out.logits.items()}
        unimodal = {
            m: {name: torch.softmax(v.float(), dim=1).numpy() for name, v in labels.items()}
            for m, labels in out.unimodal.items()
        }
        gates = out.gates.float().numpy()
        answers = []
        for i, x in enumerate(items):
            present = [m.value for m in x.modalities]
            predictions = {}
            for name, classes in self.model.classes.items():
                p = probs[name][i]
                predictions[name] = {
                    "class": classes[int(p.argmax())],
                    "probabilities": {
                        c: round(float(v), 6) for c, v in zip(classes, p, strict=True)
                    },
                }
            answers.append(
                {
                    "predictions": predictions,
                    "gates": {
                        m: round(float(gates[i][j]), 6)
                        for j, m in enumerate(self.model.modalities)
                        if m in present
                    },
                    "disagreement": self._disagreement(i, present, unimodal),
                    "modalities": present,
                    "model_version": self.model_version,
                    # For the served-request log; the handler removes it from the answer.
                    "_embeddings": {
                        m: [round(float(v), 5) for v in out.embeddings[m][i].float().tolist()]
                        for m in present
                    },
                }
            )
        return answers

    def _disagreement(
        self, i: int, present: list[str], unimodal: dict[str, dict[str, np.ndarray]]
    ) -> dict[str, Any]:
        """Labels on which two present modalities, each confident, predict different
        classes (e.g. positive words, negative voice)."""
        conflicts = []
        for name, classes in self.model.classes.items():
            votes = {}
            for m in present:
                trusted = self.reliability is None or (
                    self.reliability.get(m, {}).get(name, 0.0) >= RELIABLE_F1
                )
                if not trusted:
                    continue
                if m in unimodal and name in unimodal[m]:
                    p = unimodal[m][name][i]
                    if float(p.max()) >= DISAGREEMENT_CONFIDENCE:
                        votes[m] = classes[int(p.argmax())]
            if len(set(votes.values())) > 1:
                conflicts.append({"label": name, "by_modality": votes})
        return {"flag": bool(conflicts), "labels": conflicts}

    def answer(self, task: str, requests: list[Request]) -> list[dict[str, Any]]:
        return {"embed": self.embed, "search": self.search, "insights": self.insights}[task](
            requests
        )
