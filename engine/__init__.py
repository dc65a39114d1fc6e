"""tricode's engine: token ids in, token ids out.

Knows the NLD network (model.py), its configuration (config.py), checkpoints on disk (checkpoint.py),
the KV cache (kv_cache.py) and the decoders (generate.py, spec_quadratic.py; reference.py checks them).
Knows nothing of text, sockets or editors: the daemon tokenises and serves.
"""
