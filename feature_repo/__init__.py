"""The Feast feature repository (declarative definitions + store profiles) and the
publish step that fills it with a model version's embeddings and predictions."""
