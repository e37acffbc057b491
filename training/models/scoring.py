"""The one scoring path: model inputs -> embeddings per modality, the fused embedding,
fused predictions, gate weights and what each modality alone predicts.

Evaluation, the feature-store publish, monitoring windows, the pyfunc model and the
serving runtime all score through `score_items` / `score_arrays` (`embed_items` alone
where only embeddings are asked for), and decode predictions
with `decode_predictions`, so the same item gets the same numbers everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dualmedia.modalities.batch import Batch, assemble_batch

PROBABILITY_DIGITS = 6  # rounding of probabilities in answers and feature rows
# A modality's own prediction counts in a disagreement only when it is this sure, and
# only on labels its own head predicts well on held-out data (macro-F1, archive.json).
DISAGREEMENT_CONFIDENCE = 0.6
RELIABLE_F1 = 0.6
Reliability = dict[str, dict[str, float]]  # modality -> label -> held-out macro-F1


@dataclass
class Fused:
    """What the fusion head makes of given embeddings and presence masks."""

    probabilities: dict[str, np.ndarray]  # label -> [N, C]
    gates: np.ndarray  # [N, M], 0 where a modality is absent
    unimodal: dict[str, dict[str, np.ndarray]]  # modality -> label -> [N, C] probabilities
    fused: np.ndarray  # [N, D]: gate-weighted mean of the item's embeddings, L2-normalised

    def predicted(self) -> dict[str, np.ndarray]:
        """Class index per label, [N]."""
        return {name: p.argmax(1) for name, p in self.probabilities.items()}

    def unimodal_predicted(self) -> dict[str, dict[str, np.ndarray]]:
        return {
            m: {n: p.argmax(1) for n, p in labels.items()} for m, labels in self.unimodal.items()
        }


@dataclass
class Scores(Fused):
    ids: list[str]
    embeddings: dict[str, np.ndarray]  # modality -> [N, D] float32, zero rows where absent
    present: dict[str, np.ndarray]  # modality -> bool [N]

    def __len__(self) -> int:
        return len(self.ids)


def to_device(value: Any, device: torch.device) -> Any:
    """A batch (nested dicts/lists of tensors) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def eval_mode(model: Any) -> None:
    """`model.eval()` unless every module already is: eval() walks every module and the
    trunks' own train() overrides (2.5 ms for the default model, paid by each served
    request), where looking costs 0.4 ms."""
    if any(module.training for module in model.modules()):
        model.eval()


@torch.inference_mode()
def embed_batch(model: Any, batch: Batch) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    out = model.encoder(to_device(batch, device))
    return {m: e.float().cpu() for m, e in out.items()}


@torch.inference_mode()
def fuse(model: Any, embeddings: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> Fused:
    """Fusion of precomputed embeddings under any presence masks (ablations reuse the
    embeddings: an encoder does not depend on the other modalities)."""
    eval_mode(model)
    device = next(model.parameters()).device
    emb = {m: torch.as_tensor(embeddings[m], device=device) for m in model.modalities}
    mask = {m: torch.as_tensor(present[m], device=device) for m in model.modalities}
    out = model.fusion(emb, mask)
    gates = out.gates.float()
    stacked = torch.stack([emb[m] for m in model.modalities], dim=1)  # N x M x D
    weights = gates * torch.stack([mask[m] for m in model.modalities], dim=1).float()
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-9)
    fused = torch.nn.functional.normalize((stacked * weights.unsqueeze(-1)).sum(dim=1), dim=1)
    return Fused(
        probabilities={n: torch.softmax(v.float(), 1).cpu().numpy() for n, v in out.logits.items()},
        gates=gates.cpu().numpy(),
        unimodal={
            m: {n: torch.softmax(v.float(), 1).cpu().numpy() for n, v in labels.items()}
            for m, labels in out.unimodal.items()
        },
        fused=fused.cpu().numpy().astype(np.float32),
    )


def embed_items(
    model: Any, items: Sequence[Mapping[str, Any]], batch_size: int = 128
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embeddings [N, D] per modality (zero rows where absent) and presence masks of items
    given as model inputs (modality -> input or None), in chunks. No fusion: what `embed`
    and `search` need."""
    eval_mode(model)
    chunks: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        chunks.append(embed_batch(model, assemble_batch(chunk, model.modalities, model.media)))
    dim = model.encoder.embed_dim
    embeddings = {
        m: (torch.cat([c[m] for c in chunks]) if chunks else torch.zeros(0, dim)).numpy()
        for m in model.modalities
    }
    present = {
        m: np.array([item.get(m) is not None for item in items], dtype=bool)
        for m in model.modalities
    }
    return embeddings, present


def score_items(
    model: Any,
    items: Sequence[Mapping[str, Any]],
    ids: Sequence[str] | None = None,
    batch_size: int = 128,
) -> Scores:
    """Embed and fuse items given as model inputs (modality -> input or None)."""
    ids = [str(i) for i in (ids if ids is not None else range(len(items)))]
    embeddings, present = embed_items(model, items, batch_size)
    fused = fuse(model, embeddings, present)
    return Scores(**vars(fused), ids=ids, embeddings=embeddings, present=present)


def score_arrays(model: Any, arrays: Any, batch_size: int = 128) -> Scores:
    """Score every item of SnapshotArrays."""
    items = [arrays.item(i) for i in range(len(arrays))]
    return score_items(model, items, arrays.ids, batch_size)


@torch.no_grad()
def class_prompt_embeddings(
    model: Any, label: str, classes: list[str], templates: list[str]
) -> torch.Tensor:
    """One embedding per class: the normalised mean over the prompt templates."""
    per_class = []
    for cls in classes:
        prompts = [t.format(label=label, cls=cls) for t in templates]
        mean = model.encoder.encode_prompts(prompts).mean(0)
        per_class.append(mean / mean.norm().clamp(min=1e-6))
    return torch.stack(per_class).cpu()


def zero_shot_prompts(model: Any) -> dict[str, torch.Tensor]:
    """label -> [classes, dim] class prompt embeddings for every categorical label, from
    the prompt templates the model stores (its dataset spec); {} without a prompt modality.
    Evaluation and the serving runtime both ask here."""
    from dualmedia.contract import CategoricalLabel

    if model.encoder.prompt_modality is None:
        return {}
    templates = model.spec.prompt_templates
    return {
        name: class_prompt_embeddings(model, name, label.classes, templates)
        for name, label in model.spec.labels.items()
        if isinstance(label, CategoricalLabel)
    }


def decode_predictions(
    classes: dict[str, list[str]], probabilities: dict[str, np.ndarray], i: int
) -> dict[str, dict[str, Any]]:
    """Item i's prediction per label: its class and the rounded probabilities."""
    out = {}
    for name, names in classes.items():
        p = probabilities[name][i]
        out[name] = {
            "class": names[int(p.argmax())],
            "probabilities": {
                c: round(float(v), PROBABILITY_DIGITS) for c, v in zip(names, p, strict=True)
            },
        }
    return out


def disagreement(
    classes: dict[str, list[str]],
    unimodal: dict[str, dict[str, np.ndarray]],
    i: int,
    present: Sequence[str],
    reliability: Reliability | None,
) -> list[dict[str, Any]]:
    """Item i's labels on which two present modalities, each confident and reliable,
    predict different classes (e.g. positive words, negative voice): the `insights`
    answer's flag and the monitor's disagreement rate."""
    conflicts = []
    for name, names in classes.items():
        votes = {}
        for m in present:
            trusted = reliability is None or reliability.get(m, {}).get(name, 0.0) >= RELIABLE_F1
            if trusted and m in unimodal and name in unimodal[m]:
                p = unimodal[m][name][i]
                if float(p.max()) >= DISAGREEMENT_CONFIDENCE:
                    votes[m] = names[int(p.argmax())]
        if len(set(votes.values())) > 1:
            conflicts.append({"label": name, "by_modality": votes})
    return conflicts


def unimodal_reliability(model: Any, arrays: Any) -> Reliability:
    """Macro-F1 of each modality's own head per label, on held-out items that have the
    modality. The disagreement flag only counts a modality's vote on a label it can
    actually predict (a voice cannot see a crack in a photo)."""
    from training.metrics import classification_scores

    scores = score_arrays(model, arrays)
    reliability: Reliability = {}
    for modality, labels in scores.unimodal_predicted().items():
        has = scores.present[modality]
        reliability[modality] = {}
        for label, predicted in labels.items():
            truth = arrays.labels[label].copy()
            truth[~has] = -1
            f1 = classification_scores(truth, predicted, len(model.classes[label]))["macro_f1"]
            reliability[modality][label] = round(f1, 4) if f1 == f1 else 0.0  # NaN: no items
    return reliability
