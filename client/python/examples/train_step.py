"""Training steps of a toy two-layer model whose attention runs on the service.

    pip install "./client/python[torch]"
    scripts/run_main.sh serve                       # prints the coordinator address
    python3 client/python/examples/train_step.py 127.0.0.1:PORT

Each step splits the batch into two micro-batches and overlaps them: while
micro-batch 0's attention of a layer is on the ring, micro-batch 1's
projections for the same layer are computed locally, and its attention is
sent as soon as they are ready (RingAttention.forward_async). The first
step also checks the service against PyTorch's attention on the same
weights.
"""

import sys
import time

import torch
import torch.nn.functional as F

from ringattn import Layer
from ringattn.torch import PendingAttention, RingAttention


class Block(torch.nn.Module):
    """Pre-norm attention block: projections here, attention on the service."""

    def __init__(self, width: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, width // heads
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, (heads + 2 * kv_heads) * self.dim)
        self.proj = torch.nn.Linear(width, width)

    def project(self, x: torch.Tensor):  # x [B, S, width] -> q [B, S, H, D], k, v [B, S, Hkv, D]
        B, S, _ = x.shape
        h = self.qkv(self.norm(x)).view(B, S, self.heads + 2 * self.kv_heads, self.dim)
        return h.split([self.heads, self.kv_heads, self.kv_heads], dim=2)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        return x + self.proj(attended.flatten(2))  # attended [B, S, H, D]


class ToyModel(torch.nn.Module):
    def __init__(self, address: str, width: int = 128, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(width, heads, kv_heads) for _ in range(2))
        # Layer 0 sliding-window, layer 1 full; both [B, S, H, D] like HF models.
        self.attention = torch.nn.ModuleList([
            RingAttention(address, Layer(sliding=True, window=64), layout="bshd"),
            RingAttention(address, Layer(), layout="bshd")])
        self.head = torch.nn.Linear(width, width)

    def forward(self, micro_batches):
        """Runs the micro-batches through each layer, overlapping their attention."""
        xs = list(micro_batches)
        for block, attention in zip(self.blocks, self.attention):
            pending: list[PendingAttention] = []
            for x in xs:  # Send each micro-batch as soon as its projections are done.
                pending.append(attention.forward_async(*block.project(x)))
            xs = [block.finish(x, p.wait()) for x, p in zip(xs, pending)]
        return [self.head(x) for x in xs]


def sdpa_check(model: ToyModel, x: torch.Tensor) -> float:
    """max |service - PyTorch| over layer 0's attention (causal, window 64)."""
    block = model.blocks[0]
    q, k, v = (t.transpose(1, 2) for t in block.project(x))  # [B, H, S, D]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    S = q.shape[2]
    i = torch.arange(S)
    allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 64)
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    else:
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        want = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v
    got = model.attention[0](*block.project(x)).transpose(1, 2)
    return (got - want).abs().max().item()


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    torch.manual_seed(0)
    model = ToyModel(address)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 256, 128)
    target = torch.randn(2, 256, 128)
    print(f"layer 0 vs PyTorch attention: max|err| {sdpa_check(model, x[:1]):.2e}")
    for step in range(5):
        start = time.perf_counter()
        outs = model(x.split(1))
        loss = sum(F.mse_loss(o, t) for o, t in zip(outs, target.split(1)))
        optimizer.zero_grad()
        loss.backward()  # dQ/dK/dV from the service; sessions released after
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}  {1e3 * (time.perf_counter() - start):.0f} ms")
    status = model.attention[0].client.status()
    print(f"open sessions after the steps: {status.open_sessions}")


if __name__ == "__main__":
    main()
