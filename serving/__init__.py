"""Serving: TorchServe handler, model-archive builder, deploy/rollback client, search index."""
