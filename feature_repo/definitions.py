"""Feast definitions: item embeddings per modality, the fused embedding, predictions.

Declarative, as Feast repositories are. Every object is bound to a module-level name
because `feast apply` only registers those (and deletes registered views it cannot
find). Offline data are Parquet files under `data/` of the deployed repository;
`feature_repo.publish` writes them. Nothing here names a label: predictions are one
JSON feature (label -> class and probabilities) whatever the dataset's schema.
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, String

from dualmedia import modalities

TTL = timedelta(days=3650)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="one feedback item (the dataset record id)",
)


def _embedding_view(name: str, description: str) -> FeatureView:
    return FeatureView(
        name=f"{name}_embedding",
        entities=[item],
        ttl=TTL,
        schema=[
            Field(name=f"{name}_embedding", dtype=Array(Float32)),
            Field(name="model_version", dtype=String),
        ],
        source=FileSource(
            name=f"{name}_embedding_source",
            path=f"data/{name}_embedding.parquet",
            timestamp_field="event_timestamp",
        ),
        online=True,
        description=description,
        tags={"modality": name},
    )


# One view per modality of the registry (`feast apply` registers module-level names only,
# hence globals()), and the fused one.
for _spec in modalities.specs():
    globals()[_spec.feast_view] = _embedding_view(
        _spec.name, f"{_spec.name} in the shared embedding space"
    )
fused_embedding = _embedding_view(
    "fused", "gate-weighted mean of the item's modality embeddings, L2-normalised"
)

item_predictions = FeatureView(
    name="item_predictions",
    entities=[item],
    ttl=TTL,
    schema=[
        Field(name="predictions", dtype=String),
        Field(name="model_version", dtype=String),
    ],
    source=FileSource(
        name="item_predictions_source",
        path="data/item_predictions.parquet",
        timestamp_field="event_timestamp",
    ),
    online=True,
    description="the fused model's prediction per label (JSON: label -> class, probabilities)",
)
