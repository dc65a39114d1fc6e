"""`tricode train --drafter-for NAME`: a drafter for a pulled AR model (Qwen2.5-Coder or another
Qwen2/Llama checkpoint, a GGUF file or an HF directory): an o_proj LoRA trained with the block-diffusion
draft objective (objective.loss(drafter=True): every non-opener token of a block masked, LoRA on the
noisy rows only) on top of the frozen model, written beside it (engine/drafter.py) so that loading the
model makes it tri-mode. The loop, its time budget and its resume state are training/train.py's.

Knows how the mask token is chosen, how the training rows are made with the model's own tokenizer,
and what a finished (or budget-stopped) run writes. Knows nothing of decoding.

The mask token
--------------
An AR vocabulary has no mask token, so the drafter borrows an existing special token that the model
never meets in the prompts tricode builds: the first of MASK_CANDIDATES the vocabulary has
(Qwen2.5-Coder: `<|fim_pad|>`, id 151662), or `--mask-token TEXT`. Why `<|fim_pad|>`: it is a real row
of the embedding (unlike the untrained padding rows past the tokenizer's last token), no prompt
format of daemon/prompt uses it, source text that spells it is encoded as plain text
(protect_special_tokens), and the daemon already treats it as a stop token, so nothing tricode sends
holds it and nothing the model may mean by it is lost when the decoders refuse to emit the mask id.
Its id is recorded in drafter.json; the engine masks with that id.

The data
--------
The corpus of training/corpus.py (this machine's Python files; HumanEval excluded; the held-out split
by key hash is never trained on), each file `[BOS] + ids` in the model's own tokenizer, concatenated
in a seeded order until `max_tokens`, and cut into rows of `seq_len`: `train_<L>.npy` (uint32: a
152k vocabulary does not fit uint16) and `heldout_<L>.npy` from held-out files, with `data.json`
naming the base (sha256) whose tokenizer made them; a data folder made for another base is refused.
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MASK_CANDIDATES = ("<|fim_pad|>", "<fim_pad>", "<pad>", "[PAD]", "<unk>")
DATA_INFO = "data.json"
HELDOUT_ROWS = 64


class DrafterTrainingError(Exception):
    """A drafter cannot be trained as asked; the message says what to do."""


def choose_mask_token(tok, vocab_size: int, wanted: str | None = None) -> tuple[str, int]:
    """(text, id) of the mask token for a model whose vocabulary (textkit Tokenizer `tok`) has none."""
    names = (wanted,) if wanted else MASK_CANDIDATES
    for name in names:
        i = tok.token_id(name)
        if i is None:
            continue
        if i in (tok.eos_id, tok.bos_id) or i in (getattr(tok, "eot_ids", None) or ()) or not 0 <= i < vocab_size:
            if wanted:
                raise DrafterTrainingError(f"--mask-token {wanted!r} (id {i}) is the model's BOS/EOS/end-of-turn "
                                           f"token or outside its {vocab_size} embeddings; pick an unused special token")
            continue
        return name, i
    if wanted:
        raise DrafterTrainingError(f"--mask-token {wanted!r} is not one token of this model's vocabulary")
    raise DrafterTrainingError(f"the vocabulary has none of {', '.join(MASK_CANDIDATES)}; name an unused special "
                               f"token of this model with --mask-token TEXT")


def _rows(pieces: list[np.ndarray], seq_len: int) -> np.ndarray:
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.uint32)
    n = flat.size // seq_len
    return flat[:n * seq_len].reshape(n, seq_len)


def prepare_rows(data_dir: Path, tok, base_sha: str, seq_len: int, max_tokens: int, seed: int = 0,
                 roots=None, log=print) -> dict:
    """Write train_<L>.npy / heldout_<L>.npy / data.json (module docstring) and return data.json's dict."""
    from daemon.prompt import protect_special_tokens
    from training import corpus

    protect_special_tokens(tok)
    t0 = time.perf_counter()
    stats = corpus.CorpusStats()
    train_files, held_files = corpus.split_files(corpus.collect_sources(roots, stats=stats))
    if not train_files:
        raise DrafterTrainingError("the corpus has no training files (no Python files found under "
                                   f"{', '.join(str(r) for r in roots) if roots else 'the default roots'})")
    order = list(range(len(train_files)))
    random.Random(seed).shuffle(order)
    bos = np.array([tok.bos_id], np.uint32)

    def tokenized(files, limit):
        pieces, total, used = [], 0, 0
        for start in range(0, len(files), 256):
            batch = files[start:start + 256]
            for ids in tok.encode_batch([f.text for f in batch]):
                pieces += [bos, np.asarray(ids, np.uint32)]
                total += len(ids) + 1
                used += 1
                if total >= limit:
                    return pieces, used
        return pieces, used

    train_pieces, used = tokenized([train_files[i] for i in order], max_tokens)
    held_pieces, held_used = tokenized(held_files, HELDOUT_ROWS * seq_len)
    train, held = _rows(train_pieces, seq_len), _rows(held_pieces, seq_len)[:HELDOUT_ROWS]
    if not len(train):
        raise DrafterTrainingError(f"the corpus gave fewer than {seq_len} tokens: nothing to train on")
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, arr in (("train", train), ("heldout", held)):
        tmp = data_dir / f".{split}_{seq_len}.npy"
        np.save(tmp, arr)
        tmp.replace(data_dir / f"{split}_{seq_len}.npy")
    info = {"base_sha256": base_sha, "seq_len": seq_len, "seed": seed, "max_tokens": max_tokens,
            "train_rows": int(train.shape[0]), "heldout_rows": int(held.shape[0]),
            "train_files": used, "heldout_files": held_used, "corpus": dict(vars(stats)),
            "seconds": round(time.perf_counter() - t0, 1)}
    (data_dir / DATA_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log(f"data: {train.shape[0]:,} train rows x {seq_len} from {used:,} files, {held.shape[0]} held-out rows "
        f"from {held_used} held-out files ({info['seconds']} s)")
    return info


def ensure_rows(data_dir: Path, tok, base_sha: str, seq_len: int, max_tokens: int, seed: int, roots, log) -> dict:
    """The data folder's rows, made now if absent; refused if another base's tokenizer made them."""
    f = data_dir / DATA_INFO
    if f.is_file() and (data_dir / f"train_{seq_len}.npy").is_file():
        info = json.loads(f.read_text())
        if info.get("base_sha256") != base_sha:
            raise DrafterTrainingError(f"{data_dir} holds rows made with another model's tokenizer (base sha256 "
                                       f"{str(info.get('base_sha256'))[:16]}...); use another --data-dir")
        return info
    log(f"preparing drafter data in {data_dir} (corpus, the model's tokenizer, rows of {seq_len})...")
    return prepare_rows(data_dir, tok, base_sha, seq_len, max_tokens, seed, roots, log)


def heldout_ce(model, data_dir: Path, cfg, device) -> dict | None:
    """Held-out draft cross-entropy (masked positions) with the drafter and with the plain model."""
    from training.train import evaluate_loss
    held = data_dir / f"heldout_{cfg.seq_len}.npy"
    if not held.is_file() or np.load(held, mmap_mode="r").shape[0] == 0:
        return None
    rows = np.load(held)
    out = {"with_drafter": evaluate_loss(model, rows, cfg, device)["dlm_ce"]}
    loras = [layer.o_lora for layer in model.layers]
    for layer in model.layers:
        layer.o_lora = None
    try:
        out["plain_model"] = evaluate_loss(model, rows, cfg, device)["dlm_ce"]
    finally:
        for layer, lora in zip(model.layers, loras):
            layer.o_lora = lora
    return {k: round(v, 4) for k, v in out.items()}


def cmd_drafter(args) -> int:
    """`tricode train --drafter-for NAME`. Exit 0 when every step is done, 3 when the time budget
    (--minutes, counted from the start of the command) ended the run first (the drafter so far is
    written all the same; run again to go on)."""
    import torch

    from engine.checkpoint import CheckpointError, pick_device
    from engine.drafter import base_identity, drafter_dir, save
    from registry.models import ModelError, resolve
    from textkit.tokenizer import Tokenizer, TokenizerError
    from training.train import TrainConfig, build_model, train

    def log(m):
        print(m, file=sys.stderr, flush=True)

    if args.steps == 0:
        raise SystemExit("tricode train --drafter-for: give --steps N > 0 (a fixed schedule, which a run stopped "
                         "by --minutes continues when run again)")
    # --minutes counts from here: hashing, preparing the data and loading the model are part of it
    deadline = time.time() + args.minutes * 60 if args.minutes is not None else None

    from engine.pretrained import hf_architecture
    try:
        path = resolve(args.drafter_for)
        if not path.is_file() and hf_architecture(path) is None:
            raise SystemExit(f"tricode train --drafter-for: {path} is not a pretrained AR model (a GGUF file or an "
                             f"HF Qwen2/Llama/Mistral directory); an NLD checkpoint has its own mask token: train "
                             f"its drafter with --drafter-rank R --init {path}")
        tok = Tokenizer(path)
    except (ModelError, TokenizerError, CheckpointError) as e:
        raise SystemExit(f"tricode train --drafter-for: {e}")
    name = path.name.removesuffix(".gguf")
    work = args.work or REPO / "runs" / f"drafter-{name}"
    data_dir = args.data_dir or work / "data"
    out = args.out or drafter_dir(path)
    log(f"drafter for {path}: hashing the base weights...")
    base = base_identity(path)
    vocab = tok.vocab_size          # the engine checks the id against the model's embeddings at load
    try:
        mask_text, mask_id = choose_mask_token(tok, vocab, args.mask_token)
        seq_len = args.seq_len or 512
        ensure_rows(data_dir, tok, base["sha256"], seq_len, args.corpus_tokens, args.seed or 0,
                    args.corpus or None, log)
    except (DrafterTrainingError, CheckpointError) as e:
        raise SystemExit(f"tricode train --drafter-for: {e}")
    rank = args.drafter_rank or 32
    cfg = TrainConfig(preset="tiny", vocab_size=vocab, seq_len=seq_len, block=args.block or 8,
                      batch=args.batch or 32, micro_batch=args.micro_batch or 8, lr=args.lr or 1e-3,
                      warmup=args.warmup if args.warmup is not None else 50,
                      steps=args.steps if args.steps is not None else 2000, seed=args.seed or 0, w_dlm=1.0,
                      w_ar=0.0, drafter_rank=rank, drafter_alpha=2.0 * rank, init=str(path), mask_id=mask_id,
                      compile=args.compile)
    log(f"mask token {mask_text!r} (id {mask_id}), LoRA rank {rank} on o_proj, block {cfg.block}, "
        f"rows of {seq_len}; resume state in {work}")
    try:
        state = train(cfg, data_dir, work, device=args.device, deadline=deadline, resume=not args.fresh)
    except CheckpointError as e:
        raise SystemExit(f"tricode train --drafter-for: {e}")
    finished = state is not None
    state = work / "train_state.pt"
    device = pick_device(args.device)
    st = torch.load(state, map_location=device, weights_only=False)
    cfg = TrainConfig(**st["config"])
    model = build_model(cfg, device)
    model.load_state_dict(st["model"], strict=False)
    losses = heldout_ce(model, data_dir, cfg, device)
    if losses:
        log(f"held-out draft cross-entropy: {losses['with_drafter']:.3f} with the drafter, "
            f"{losses['plain_model']:.3f} for the plain model")
    summary = {"steps": st["step"], "total_steps": cfg.steps, "finished": finished, "tokens_seen": st["tokens"],
               "heldout_draft_ce": losses, "train_config": asdict(cfg),
               "data": json.loads((data_dir / DATA_INFO).read_text()),
               "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    d = save(model, path, mask_token_id=mask_id, mask_token=mask_text, block_size=cfg.block, base=base,
             summary=summary, out=out)
    log(f"drafter written to {d} ({st['step']}/{cfg.steps} steps{'' if finished else '; run again to continue'})")
    return 0 if finished else 3
