"""What training needs that is not about pretraining or any one task: process-group start-up
under every launcher, the DeepSpeed engine and its parameter groups, the learning-rate schedule,
checkpoints with RNG and data position, the metrics writer. ``xfm.pretrain`` and
``xfm.finetune`` both build on it; neither imports the other."""
