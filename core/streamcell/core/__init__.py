"""The I/O-free core: the LSTM step, the state store, the checkpoint format,
the event rules and the Predictor that ties them together.

These modules import torch, numpy and the standard library only, so that the
service and the trainer share them and the service never pulls in Ray (a test
checks it). ``streamcell`` itself is a namespace package spread over the source
roots core/, service/, trainer/, demo/ and protos/; see docs/ARCHITECTURE.md.
"""
