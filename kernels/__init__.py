"""LoRDS Triton kernels."""
