"""Fine-tuning: one shared loop (``xfm.finetune.loop``) and one module per downstream task
(``xfm.finetune.tasks``), registered by name (``xfm.finetune.registry``)."""
