"""The core layer: cells, gate math, validation and masking, unrolling, hand-written
backward passes, parallel scans and the choice among them.

It knows nothing of language models and imports nothing from the layers above
it (models, training, analysis, interop, cli).
"""
