"""The shared runtime every stage stands on: precision and autocast, training control, the attention backend,
log-prob math, models and chat formats, data, sampling, metrics, the reward protocol and the TRL runner.

It imports nothing above it (no stage, evaluation, labeling, view or workflow); `tests/test_layers.py` keeps it so.
"""
