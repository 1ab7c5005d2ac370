"""imagpose.kernels: fused Triton kernels for the cross-view attention (issue #6)."""
