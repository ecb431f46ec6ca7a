"""Client of the ringattn ring-attention service.

numpy in and out: Client, Layer, ForwardResult, BackwardResult. PyTorch
autograd integration: ringattn.torch (the `ringattn[torch]` extra).
"""

from ringattn.client import Client
from ringattn.errors import RingattnError
from ringattn.layer import Layer
from ringattn.results import BackwardResult, ForwardResult, PreparedBatch

__version__ = "0.1.0"
__all__ = ["BackwardResult", "Client", "ForwardResult", "Layer", "PreparedBatch",
           "RingattnError", "__version__"]
