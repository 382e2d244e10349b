"""A grid of experiments on a Slurm cluster: the grid as DVC expands it (grid), what the sweep
runs and where it pushes (repository), the sbatch job array (script), talking to Slurm (slurm),
submitting and reporting (sweep). No mlflow import here: runs are read through tracking."""
