"""Shipping a model: TFLite export with a parity gate, the LiteRT server, and Ray job submission.

Kept import-light: ``rllib-rec serve`` must never load torch, TensorFlow, Keras or Ray.
"""
