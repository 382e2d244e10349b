"""MLflow, and only here: where the store is (store), writing a run (runs), reading runs back
(queries), model sources and the registry (registry), serving the UI (server)."""
