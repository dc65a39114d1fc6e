"""tricode's engine: token ids in, token ids out.

Knows the NLD network (model.py), which also serves pretrained AR checkpoints of the Qwen2/Llama family
(pretrained.py: HF directories; gguf.py: GGUF files), its configuration (config.py), checkpoints on
disk (checkpoint.py, which dispatches),
the KV cache (kv_cache.py) and the decoders (generate.py, spec_quadratic.py; reference.py checks them).
Knows nothing of text, sockets or editors: the daemon tokenises and serves.
"""
