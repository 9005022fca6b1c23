"""From samples to batches, in every run (pretraining and each fine-tuning task): ``sampler``
(which samples each rank sees, in which order, where to resume), ``loader`` (the one DataLoader),
``batch_ring`` (shared-memory slots through which workers hand over whole batches),
``padding`` (ragged texts and region sets to batch tensors) and ``regions`` (region geometry,
packing and the global image token)."""
