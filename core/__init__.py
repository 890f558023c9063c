"""streamcell: online sequence prediction on event streams.

The modules directly in this package (model, state, checkpoint, events,
normalization, predictor) are the I/O-free core: they import torch, numpy and
the standard library only, so that the service and the trainer share them and
the service never pulls in Ray.
"""

__version__ = "0.1.0"
