"""The deterministic simulator: simulated clock, network and disk, workloads, and checkers."""
