"""retino's benchmarks: its input path and train step timed against the lab report's loop."""
