"""Python client of the ringattn coordinator: numpy arrays in, numpy arrays out."""

from ringattn.client import BackwardResult, Client, ForwardResult, Layer

__all__ = ["BackwardResult", "Client", "ForwardResult", "Layer"]
