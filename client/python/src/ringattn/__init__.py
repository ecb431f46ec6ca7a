"""Client of the ringattn ring-attention service.

numpy in and out: Client, Layer, ForwardResult, BackwardResult, PreparedBatch;
SharedRegion for tensors shared in place with a service on this host. PyTorch
autograd integration: ringattn.torch (the `ringattn[torch]` extra).
"""

from ringattn.client import Client
from ringattn.errors import RingattnError
from ringattn.layer import Layer
from ringattn.region import SharedRegion
from ringattn.results import BackwardResult, ForwardResult, PreparedBatch

__version__ = "0.1.0"
__all__ = ["BackwardResult", "Client", "ForwardResult", "Layer", "PreparedBatch",
           "RingattnError", "SharedRegion", "__version__"]
