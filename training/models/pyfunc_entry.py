"""The pyfunc model file MLflow logs (models from code: nothing is pickled).

MLflow runs this file when it loads the model; `training` comes with the model's code
paths, the weights and config come as its artifacts (see training/models/pyfunc.py).
"""

import mlflow

from training.models.pyfunc import FusedModelPyfunc

mlflow.models.set_model(FusedModelPyfunc())
