"""The one exception the package raises for a failed call."""

from __future__ import annotations

import grpc


class RingattnError(grpc.RpcError):
    """A call failed: the gRPC status code and the server's message.

    Checks the client makes before sending (shapes, dtypes) raise it too, with
    INVALID_ARGUMENT, so a caller handles bad input the same way wherever it
    is caught. code() and details() mirror grpc.Call, so code written against
    grpc.RpcError keeps working.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> "RingattnError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")


def invalid(message: str) -> RingattnError:
    return RingattnError(grpc.StatusCode.INVALID_ARGUMENT, message)
