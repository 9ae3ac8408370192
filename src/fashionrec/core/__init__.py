"""The bottom layer: parameters, the error hierarchy, small file helpers and MLflow set-up
(mlflow imported lazily)."""
