"""End-to-end tests against a real local control plane (see e2e/cluster) and simulated agents (e2e/sim)."""
