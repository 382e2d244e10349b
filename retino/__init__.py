"""retino: diabetic-retinopathy grading with torchvision ResNets, DVC and MLflow."""
