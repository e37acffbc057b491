"""Gathering features with gradients: 2 gloo processes with batch B give the loss and the
(DDP-averaged) gradients of 1 process with the concatenated batch 2B. The same holds for
the label losses (class-weighted, with labels and modalities missing unevenly)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from dualmedia.modalities import MediaConfig
from synthetic import dataset_spec
from synthetic.fixtures import random_arrays
from training.config import REPO_CONFIGS, load_train_config
from training.data import MultimodalDataset, collate_with
from training.models.factory import build_fused_model
from training.models.loss import ClipLoss

GLOBAL_BATCH = 12
REPO = Path(__file__).resolve().parents[2]

# Shared by the reference run (in this process) and the workers: the same model (seeded)
# and the same global batch, in which some items miss some modalities.
SETUP = textwrap.dedent(
    f"""
    import torch
    from dualmedia.modalities import MediaConfig
    from synthetic import dataset_spec
    from training.config import REPO_CONFIGS, load_train_config
    from training.data import MultimodalDataset, collate_with
    from training.models.factory import build_fused_model
    from synthetic.fixtures import random_arrays

    def setup():
        torch.manual_seed(0)
        config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
        model = build_fused_model(dataset_spec(), MediaConfig(), config)
        arrays = random_arrays(dataset_spec(), {GLOBAL_BATCH}, MediaConfig(), 0.3, seed=1)
        items = [MultimodalDataset(arrays, model.modalities)[i] for i in range(len(arrays))]
        # Every other label of the first items unknown: ranks hold unequal known counts.
        for i, item in enumerate(items[: {GLOBAL_BATCH} // 2]):
            for j, name in enumerate(sorted(item["labels"])):
                if (i + j) % 2:
                    item["labels"][name] = -1
        return model, items

    def label_objective(model, batch):
        from training.lit import label_loss
        weights = {{n: torch.arange(1.0, len(c) + 1) for n, c in model.classes.items()}}
        out = model(batch)
        fused = label_loss(out.logits, batch["labels"], None, weights)
        unimodal = [label_loss(out.unimodal[m], batch["labels"], out.present[m], weights)
                    for m in model.modalities]
        return fused + torch.stack(unimodal).sum()
    """
)

WORKER = SETUP + textwrap.dedent(
    """
    import os, sys
    import torch.distributed as dist
    from training.models.loss import ClipLoss

    rank, world, init_file, out = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    model, items = setup()
    per_rank = len(items) // world
    collate = collate_with(MediaConfig(), model.modalities)
    batch = collate(items[rank * per_rank:(rank + 1) * per_rank])
    embeddings = model.encoder(batch)
    loss, pairs = ClipLoss()(embeddings, batch["present"], model.encoder.logit_scale)
    loss.backward()

    def averaged_grads():
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)  # what DDP does: average gradients over ranks
                grads[name] = p.grad / world
        model.zero_grad(set_to_none=True)
        return grads

    grads = averaged_grads()
    labels = label_objective(model, batch)
    labels.backward()
    label_grads = averaged_grads()
    dist.all_reduce(labels)  # each rank holds its share: the mean is the batch's loss
    torch.save({"loss": loss.detach(), "pairs": sorted(pairs), "grads": grads,
                "label_loss": labels.detach() / world, "label_grads": label_grads}, out)
    dist.destroy_process_group()
    """
)


def reference() -> dict[str, object]:
    namespace: dict = {}
    exec(SETUP, namespace)
    model, items = namespace["setup"]()
    batch = collate_with(MediaConfig(), model.modalities)(items)
    embeddings = model.encoder(batch)
    loss, pairs = ClipLoss()(embeddings, batch["present"], model.encoder.logit_scale)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    labels = namespace["label_objective"](model, batch)
    labels.backward()
    label_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "pairs": sorted(pairs), "grads": grads,
            "label_loss": labels.detach(), "label_grads": label_grads}  # fmt: skip


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(rank),
                str(tmp_path / "init"),
                str(tmp_path / f"rank{rank}.pt"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]

    ref = reference()
    assert ref["pairs"] == ["image_audio", "text_audio", "text_image"]
    assert "encoder.logit_scale" in ref["grads"]
    assert any(n.startswith("encoder.trunks.image") for n in ref["grads"])
    assert any(n.startswith("fusion.") for n in ref["label_grads"])
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["pairs"] == ref["pairs"]
        for loss, grads in (("loss", "grads"), ("label_loss", "label_grads")):
            assert torch.allclose(result[loss], ref[loss], atol=1e-5), (rank, loss)
            assert set(result[grads]) == set(ref[grads])
            for name, grad in ref[grads].items():
                assert torch.allclose(result[grads][name], grad, atol=1e-5, rtol=1e-4), name


def test_without_gathering_each_rank_would_see_only_its_half() -> None:
    """The property above is not trivial: a local loss on half the batch differs."""
    torch.manual_seed(0)
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    from dualmedia.modalities import MediaConfig

    model = build_fused_model(dataset_spec(), MediaConfig(), config)
    arrays = random_arrays(dataset_spec(), GLOBAL_BATCH, MediaConfig(), 0.3, seed=1)
    items = [MultimodalDataset(arrays, model.modalities)[i] for i in range(len(arrays))]
    with torch.no_grad():
        full = collate_with(MediaConfig(), model.modalities)(items)
        half = collate_with(MediaConfig(), model.modalities)(items[: GLOBAL_BATCH // 2])
        scale = model.encoder.logit_scale
        whole, _ = ClipLoss()(model.encoder(full), full["present"], scale)
        local, _ = ClipLoss()(model.encoder(half), half["present"], scale)
    assert not torch.allclose(whole, local)
