"""Tiny NLD-format checkpoints with random weights, for tests (and `python -m tests.tiny_checkpoint DIR`).

They are real checkpoints in the Hugging Face layout: config.json, safetensors (optionally sharded),
tokenizer.json (a small byte-level BPE trained here on a few lines of Python), optionally the
linear_spec_lora/ adapter. Random weights produce gibberish, which is all the decoders' equality
tests need.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

SAMPLE_CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i)\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    main(sys.argv)\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "result = [x * x for x in items if x % 2 == 0]\n",
    "with open(path) as f:\n    data = f.read()\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"]


def tiny_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SAMPLE_CODE * 4, trainer)
    return tok


def write_tiny_checkpoint(path, *, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4,
                          kv_heads: int = 2, block_size: int = 8, dtype=torch.float32, shards: int = 1,
                          lora: bool = False, rope_scaling=None) -> Path:
    from engine.checkpoint import save_checkpoint
    from engine.config import ModelConfig
    from engine.model import NLDModel
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    tok.save(str(path / "tokenizer.json"))
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=hidden // heads, rope_theta=10000.0, rope_scaling=rope_scaling,
                      max_position_embeddings=4096, mask_token_id=1, eos_token_id=0, bos_token_id=0,
                      block_size=block_size, torch_dtype="float32")
    g = torch.Generator().manual_seed(seed)
    model = NLDModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5))
        if lora:
            model.add_lora(r=4, alpha=16)
            for layer in model.layers:
                layer.o_lora.A.copy_(torch.randn(layer.o_lora.A.shape, generator=g) * 0.1)
                layer.o_lora.B.copy_(torch.randn(layer.o_lora.B.shape, generator=g) * 0.1)
    save_checkpoint(model, path, dtype=dtype, shards=shards)
    return path


if __name__ == "__main__":
    print(write_tiny_checkpoint(sys.argv[1]))
