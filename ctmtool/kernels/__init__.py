"""Device kernels with pure-PyTorch references (Triton kernels are used on CUDA only)."""
