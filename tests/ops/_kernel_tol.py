"""Shared tolerance rule of the kernel tests (flash-attention style).

The truth is the float64 reference on the exact input values. The yardstick is plain PyTorch run
in the input's own dtype (no upcast): its error against the truth is what that dtype
honestly costs. A kernel passes when, for every output column group g,
    max|kernel - truth|_g <= 2 * max|pytorch_same_dtype - truth|_g + atol * max|truth|_g
i.e. at most twice the error of PyTorch itself plus a small error relative to the group's scale
(atol covers outputs PyTorch happens to get exactly right). Groups: each witness feature of K2
(s^4 and e live on scales 1e10 apart), and G and s of K3.
"""

import torch

ATOL = 1e-6


def check(
    name: str, got: torch.Tensor, truth: torch.Tensor, same_dtype: torch.Tensor, atol: float = ATOL
):
    got, truth, same_dtype = got.double().cpu(), truth.double().cpu(), same_dtype.double().cpu()
    assert got.shape == truth.shape, f"{name}: shape {tuple(got.shape)} != {tuple(truth.shape)}"
    err = (got - truth).abs()
    bound = 2 * (same_dtype - truth).abs().max().item() + atol * truth.abs().max().item()
    if err.numel() and err.max().item() > bound:
        i = int(err.argmax())
        idx = tuple(int(a) for a in torch.unravel_index(torch.tensor(i), err.shape))
        raise AssertionError(
            f"{name}: max error {err.max().item():.3e} > bound {bound:.3e} at {idx}: "
            f"got {got[idx].item():.9g}, truth {truth[idx].item():.9g}, "
            f"{int((err > bound).sum())} of {err.numel()} elements out"
        )
