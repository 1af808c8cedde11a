"""The model, its tokenizer, training and pretraining runs on Ray Train.

Layer: infra -> flows -> **modeling** -> tasks -> ground. May import ``tasks`` (token stages) and the
ground; never ``flows`` or ``infra`` (tests/test_layers.py checks).
"""
