"""Real, small services and helpers that tool-use tasks and tests run on this machine (loopback only)."""
