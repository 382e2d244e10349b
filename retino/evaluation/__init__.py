"""Using a trained model: evaluate, predict, Grad-CAM, figures, and comparing runs."""
