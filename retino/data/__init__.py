"""From a dataset on disk to model input: layouts and validation, prepare, dataset, transforms."""
