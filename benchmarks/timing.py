"""Timing helpers shared by the benchmark files."""


def sync_cuda() -> None:
    """Wait for queued GPU work, so a benchmark round times the kernels and not just their launch."""
    import torch

    torch.cuda.synchronize()
