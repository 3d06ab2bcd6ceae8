"""The batched decode engine (nano-vllm split): a torch-free scheduler over `Sequence`s, a
model runner that owns the model, KV cache and slots, and `LLMEngine` that drives both."""
