"""Scale-out: multi-GPU training and streamed PTQ throughput, the cost model, profiles."""
