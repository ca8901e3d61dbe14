"""Stream builders, the simulated Calico node and the test VM (for tests, demo and docs)."""
