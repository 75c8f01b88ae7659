"""Stages put together: the quickstart (the whole loop on the sandbox), what it says to expect (`plan`), the
iterative loop of rounds (`loop`), PPO sweeps (`sweeps`)."""
