"""The models layer: the RNN language model, the fixed-window NNLM, their losses and scores.

Imports the core layer only (it knows cells, not training).
"""
