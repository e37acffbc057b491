"""The model behind the endpoints, runnable in-process or inside a TorchServe worker.

One `InferenceRuntime` answers a batch of validated requests (serving.protocol) for
one task. The TorchServe handler is a thin adapter over it, and the benchmark and
tests call it directly to compare the served answers with the in-process model.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dualmedia.modalities import MediaBounds, MediaConfig
from dualmedia.settings import Settings
from serving.catalogue import Catalogue, UnknownFilter
from serving.protocol import BadRequest, Inputs, Request
from training.models.scoring import (
    Reliability,
    decode_predictions,
    disagreement,
    embed_items,
    score_items,
    zero_shot_prompts,
)

log = logging.getLogger(__name__)


class InferenceRuntime:
    def __init__(
        self,
        model: Any,
        catalogue: Catalogue | None,
        model_version: str,
        threads: int = 1,
        reliability: Reliability | None = None,
    ) -> None:
        self.model = model.eval()
        self.reliability = reliability
        model.encoder.cache_outputs(False)
        self.media: MediaConfig = model.media
        # Class prompt embeddings from the templates stored with the model (once).
        self.prompts = zero_shot_prompts(model)
        self.bounds: MediaBounds = model.bounds
        self.catalogue = catalogue
        self.live: LiveCatalogue | None = None  # a catalogue in object storage, growing
        self.model_version = model_version
        # The worker's whole CPU budget: torch's threads and the BLAS numpy uses for
        # the log-mel (OpenBLAS ignores torch's setting and would take every core, so
        # two workers would oversubscribe the machine).
        torch.set_num_threads(max(1, threads))
        threadpool_limits(limits=max(1, threads))

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        model_version: str,
        threads: int = 1,
        settings: Settings | None = None,
    ) -> InferenceRuntime:
        """Load an unpacked archive (weights.safetensors, model.json, archive.json) and
        the search catalogue archive.json names in object storage (`settings`' store)."""
        from training.models.factory import load_fused_model_dir

        folder = Path(folder)
        model = load_fused_model_dir(folder)
        prompt_modality = model.encoder.prompt_modality
        if (folder / "tokenizer").exists() and prompt_modality is not None:
            from transformers import AutoTokenizer

            # The tokenizer archived with the model, not whatever the environment has.
            model.encoder.trunk(prompt_modality).tokenizer = AutoTokenizer.from_pretrained(
                str(folder / "tokenizer"), local_files_only=True
            )
        info_path = folder / "archive.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        runtime = cls(model, None, model_version, threads, info.get("reliability"))
        if info.get("search_uri"):
            runtime.live = LiveCatalogue(settings or Settings(), info["search_uri"])
            runtime.catalogue = runtime.live.catalogue
        return runtime

    def close(self) -> None:
        """Stop following the live catalogue (its background thread)."""
        if self.live is not None:
            self.live.close()

    @property
    def modalities(self) -> list[str]:
        return list(self.model.modalities)

    def catalogue_targets(self) -> list[str]:
        """What `search` can rank: the catalogue's modalities, then `fused`."""
        if self.catalogue is None:
            return []
        return self.catalogue.targets

    def _check_modalities(self, items: list[Inputs]) -> None:
        served = set(self.modalities)
        for x in items:
            for m in x.modalities:
                if m not in served:
                    raise ValueError(f"this model has no {m} encoder")

    def score(self, items: list[Inputs]) -> Any:
        """The one scoring path (training.models.scoring) over validated inputs."""
        self._check_modalities(items)
        return score_items(self.model, [x.items for x in items], batch_size=max(1, len(items)))

    def embeddings(self, items: list[Inputs]) -> dict[str, np.ndarray]:
        """Embeddings only (embed, search): the fusion head is not run."""
        self._check_modalities(items)
        inputs = [x.items for x in items]
        return embed_items(self.model, inputs, batch_size=max(1, len(items)))[0]

    # ---- tasks ----------------------------------------------------------------------------
    def embed(self, requests: list[Request]) -> list[dict[str, Any]]:
        embeddings = self.embeddings([r.inputs for r in requests])
        answers = []
        for i, r in enumerate(requests):
            modality = r.inputs.modalities[0]
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
        embeddings = self.embeddings([r.inputs for r in requests])
        answers = []
        for i, r in enumerate(requests):
            given = r.inputs.modalities
            target = r.target or given[0]
            queries = {m: embeddings[m][i] for m in given}
            try:
                results = self.catalogue.search(
                    queries, r.weights, target, r.k, r.filter, rerank=r.rerank
                )
            except UnknownFilter as exc:
                raise BadRequest(400, "bad_value", f"field 'filter': {exc}", "filter") from None
            answers.append(
                {
                    "query_modalities": given,
                    "target": target,
                    "results": results,
                    "model_version": self.model_version,
                }
            )
        return answers

    def insights(self, requests: list[Request]) -> list[dict[str, Any]]:
        items = [r.inputs for r in requests]
        scores = self.score(items)
        answers = []
        for i, x in enumerate(items):
            present = x.modalities
            answers.append(
                {
                    "predictions": decode_predictions(self.model.classes, scores.probabilities, i),
                    "gates": {
                        m: round(float(scores.gates[i][j]), 6)
                        for j, m in enumerate(self.model.modalities)
                        if m in present
                    },
                    "disagreement": self._disagreement(i, present, scores.unimodal),
                    "zero_shot": self._zero_shot(i, present, scores.embeddings),
                    "modalities": present,
                    "model_version": self.model_version,
                    # For the served-request log; the handler removes it from the answer.
                    "_embeddings": {
                        m: [round(float(v), 5) for v in scores.embeddings[m][i].tolist()]
                        for m in present
                    },
                }
            )
        return answers

    def _zero_shot(
        self, i: int, present: list[str], embeddings: dict[str, np.ndarray]
    ) -> dict[str, dict[str, Any]]:
        """label -> modality -> the class whose prompts are nearest to that modality's
        embedding, with the cosine similarity (every modality but the prompts' own)."""
        own = self.model.encoder.prompt_modality
        answer: dict[str, dict[str, Any]] = {}
        for label, prompts in self.prompts.items():
            classes = self.model.classes[label]
            answer[label] = {}
            for m in present:
                if m == own:
                    continue
                similarity = prompts.numpy() @ embeddings[m][i].astype(np.float32)
                best = int(similarity.argmax())
                answer[label][m] = {
                    "class": classes[best],
                    "similarity": round(float(similarity[best]), 4),
                }
        return answer

    def _disagreement(
        self, i: int, present: list[str], unimodal: dict[str, dict[str, np.ndarray]]
    ) -> dict[str, Any]:
        conflicts = disagreement(self.model.classes, unimodal, i, present, self.reliability)
        return {"flag": bool(conflicts), "labels": conflicts}

    def answer(self, task: str, requests: list[Request]) -> list[dict[str, Any]]:
        return {"embed": self.embed, "search": self.search, "insights": self.insights}[task](
            requests
        )


class LiveCatalogue:
    """A published catalogue (serving/search_store.py) and the batches published to it
    since: a background thread looks every `search_refresh_s` and adds any new batch to
    the live indexes (no redeploy), so no request waits for object storage. A batch is
    downloaded first, then added (under the catalogue's lock, as searches read under it).
    A failed look is logged and retried later; search keeps answering."""

    def __init__(self, settings: Settings, uri: str) -> None:
        from dualmedia.storage import ObjectStore
        from serving.search_store import load_catalogue

        self.store = ObjectStore(settings)
        self.uri = uri
        self.every_s = settings.search_refresh_s
        self.catalogue = load_catalogue(self.store, uri)
        self.batches: set[str] = set()
        self.stopped = threading.Event()
        self.refresh()  # the batches published so far, before the first search
        threading.Thread(target=self._watch, name="search-refresh", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.refresh()

    def close(self) -> None:
        """Stop looking for new batches."""
        self.stopped.set()

    def refresh(self) -> list[str]:
        """Add the batches published since the last look; their names."""
        from serving.search_store import batch_prefix, load_catalogue, new_batches

        added = []
        try:
            for batch in new_batches(self.store, self.uri, self.batches):
                segment = load_catalogue(self.store, str(batch_prefix(self.uri, batch)))
                self.catalogue.extend(segment)
                self.batches.add(batch)
                added.append(batch)
        except Exception as exc:  # object storage away: serve what is loaded, look again
            log.warning("search catalogue %s: new batches not loaded: %s", self.uri, exc)
        return added
