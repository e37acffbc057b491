"""The model library (OpenCLIP's `open_clip`): what inference needs and nothing else.

encoder.py (per-modality trunks + projections, one shared space), fusion.py, loss.py,
distributed.py (feature gathering for the loss), factory.py (build / save / load),
scoring.py (the one scoring path), pyfunc.py (the MLflow model). The trainer
(Lightning modules, data, callbacks, entry points, evaluation) lives in `training/`.
"""
