"""Model size presets of `tricode train` (torch-free, so that the CLI can list them without loading torch)."""
from __future__ import annotations

# Sizes measured on the 2-core CPU (docs/model_card.md): forward cost is dominated by per-op
# overhead up to ~25M parameters there, so the largest model under the 40 MB fp16 limit that keeps a
# one-token forward fast wins.
PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=64),
    "base": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=64),
}
# The v2 candidates of scripts/size_sweep.py (docs/model_v2.md): wider before deeper, MLP ~2.7x, head dim 64.
for _h, _m, _kv in ((512, 1408, 2), (640, 1728, 2), (768, 2048, 4)):
    for _l in (6, 8):
        PRESETS[f"h{_h}l{_l}"] = dict(hidden_size=_h, intermediate_size=_m, num_hidden_layers=_l,
                                     num_attention_heads=_h // 64, num_key_value_heads=_kv, head_dim=64)
PRESETS["v2"] = PRESETS["h512l6"]   # the choice recorded in docs/model_v2.md (25.3M parameters)
