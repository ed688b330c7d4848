"""Streaming loaders over webdataset shards, the DeepSpeed engine, the pretraining loop,
checkpoints with exact resume, export, and launchers (deepspeed, torchrun, SLURM)."""
