"""Raw corpora -> webdataset shards, shard verification and the synthetic world.
Imports no training code (no xfm.model, no xfm.pretrain)."""
