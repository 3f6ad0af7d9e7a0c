"""The analysis layer: where RNNs fail, measured -- diagnostics, long-range tasks, plots.

Research code, loaded lazily by ``jrnn.diagnostics`` / ``jrnn.tasks``; imports
the layers below it (core, models, training), never the command line.
"""
