"""One-off GPU probes behind figures in docs/kernels.md."""
