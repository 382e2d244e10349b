"""The logged model's code (MLflow models from code, no pickle): copied into every model the
train step logs, and run when one loads. It grades with the retino installed where it runs,
the environment `mlflow models serve --env-manager local` uses."""

from mlflow.models import set_model

from retino.tracking.served import GradingModel

set_model(GradingModel())
