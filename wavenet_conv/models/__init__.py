"""The models: the lecture's tree and the conv (one model, two forms), their inference, gated and ensemble forms,
the cached sampler, and checkpoints."""
