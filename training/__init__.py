"""Training: encoders, fusion, losses, Lightning modules, evaluation, registry and promotion."""
