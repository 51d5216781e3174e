"""Per-vCPU memory access streams: generators and trace readers (knows nothing of the simulator)."""
