"""The training layer: jitted train/eval steps, epoch loops, checkpoints, several devices,
TensorBoard event files.

Imports the models and core layers (and :mod:`jrnn.data`), nothing above.
"""
