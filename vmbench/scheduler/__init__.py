"""Where runs execute: in this process (local), later queues, per-GPU workers, torchrun and SLURM."""
