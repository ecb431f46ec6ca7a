"""One attention layer's configuration (SPEC §2)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from ringattn._proto.attention.v1 import attention_service_pb2 as pb


@dataclasses.dataclass(frozen=True)
class Layer:
    """Full or sliding-window causal attention; scale defaults to 1/sqrt(D)."""

    sliding: bool = False
    window: int = 512
    scale: Optional[float] = None
    causal: bool = True
    vision_bidirectional: bool = True
    dropout: float = 0.0

    def to_proto(self) -> pb.LayerConfig:
        layer = pb.LayerConfig(
            kind=pb.LayerConfig.KIND_SLIDING if self.sliding else pb.LayerConfig.KIND_FULL,
            window=self.window, causal=self.causal,
            vision_bidirectional=self.vision_bidirectional, dropout=self.dropout)
        if self.scale is not None:
            layer.scale = self.scale
        return layer
