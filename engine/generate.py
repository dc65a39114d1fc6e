"""The three decoders: token ids in, token ids out (DESIGN.md §3).

    ar         prefill, then one causal forward per token
    diffusion  prefill gives the seed; per block [seed, M x (B-1)] bidirectional denoise steps that read
               the cache without writing it, then one causal pass that commits the block
    spec       prefill gives the seed; per block one bidirectional draft (LoRA on, no cache write) and
               one causal verify (appends K/V); keep the longest agreeing prefix plus a bonus token
               (`spec_variant="quadratic"`: draft and verify fused into one forward, see spec_quadratic);
               a draft found in the context (lookup.py) replaces the draft forward

A checkpoint without a drafter (an AR family, config.py `has_drafter`) decodes `ar`, and `spec` with
context drafts only: a step with no match in the context verifies the seed alone, which is an AR step.
`diffusion`, and `spec` that would need a diffusion draft (lookup off, the quadratic variant), raise
ModeError naming the checkpoint and the modes it serves. An AR checkpoint with a drafter attached
(engine/drafter.py) serves all three: its denoise steps, like its drafts, run with the LoRA on.

Each decoder is a generator: it yields a `Forward` (the ids to run, the cache, the attention
pattern) and receives that forward's logits, so one driver can run a single decode (`generate`) and
another can run the pending forwards of many decodes as one batched forward (`step`).

Every decoder stops on EOS, a stop callback (the daemon's stop strings), max_new_tokens, a deadline
and a cancel flag checked before every forward, and returns its tokens with statistics. The KV cache
passed in may already hold an earlier prompt: the common prefix is reused and only the rest is
prefilled. `Prefill` runs a prompt into a cache and generates nothing (the daemon's prefetch). This module knows nothing of text; `reference.py` holds the cache-free decoders that
check these.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator

import torch

from engine.kv_cache import CacheFullError, KVCache
from engine.lookup import LOOKUP_TOKENS, Lookup, sized_draft_length
from engine.model import NLDModel
from engine.runner import runner_for
from triton_kernels.unmask import unmask_step
from triton_kernels.verify import verify_greedy, verify_sample

MODES = ("ar", "diffusion", "spec")
SPEC_VARIANTS = ("auto", "linear", "quadratic")

# Measured on the 2-core CPU with the embedded model (docs/model_card.md): mean acceptance is 2.46
# tokens per verify at block 4 and 2.56 at block 8, while an 8-token forward costs ~10% more than a
# 4-token one there; per-forward overhead dominates, so the narrower block wins.
CPU_BLOCK_SIZE = 4
DEFAULT_THRESHOLD = 0.9


@dataclass(frozen=True)
class DecodeParams:
    mode: str = "spec"
    max_new_tokens: int = 64
    block_size: int | None = None      # None: the device default (config's block_size on a GPU)
    threshold: float | None = None     # diffusion commit threshold
    temperature: float = 0.0
    seed: int | None = None
    deadline: float | None = None      # time.monotonic() after which no forward starts
    decode_s: float | None = None      # with a deadline: the decode gets at least this long after its prefill
    spec_variant: str = "auto"         # auto: the device's (default_spec_variant)
    stop_token_ids: tuple[int, ...] = ()
    lookup: bool = True                # spec: draft from the context when its tail occurred before (lookup.py)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.spec_variant not in SPEC_VARIANTS:
            raise ValueError(f"spec_variant {self.spec_variant!r}: choose one of {', '.join(SPEC_VARIANTS)}")
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be within [0, 1]")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.decode_s is not None and self.decode_s < 0:
            raise ValueError("decode_s must be >= 0")


@dataclass
class DecodeResult:
    tokens: list[int]
    stop_reason: str                   # eos | stop | length | deadline | cancelled
    mode: str
    nfe: int = 0                       # forwards, the prefill counted as one
    prefill_tokens: int = 0            # prompt tokens actually run through the model
    reused_tokens: int = 0             # prompt tokens whose K/V came from the cache
    accept_lengths: list[int] = field(default_factory=list)   # spec: tokens emitted per verify
    lookup_steps: int = 0              # spec: verifies whose draft came from the context, not a forward
    denoise_steps: list[int] = field(default_factory=list)    # diffusion: steps per block
    block_size: int = 1
    prefill_ms: float = 0.0
    elapsed_ms: float = 0.0

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / self.nfe if self.nfe else 0.0

    @property
    def mean_accept_length(self) -> float:
        return sum(self.accept_lengths) / len(self.accept_lengths) if self.accept_lengths else 0.0


@dataclass(frozen=True)
class Forward:
    """One forward a decoder asks for. The driver runs it, alone or batched with others of the same
    `key`, and sends back its logits [T, V] (the mask id already ruled out)."""
    ids: list[int]
    cache: KVCache
    pattern: str
    write: bool
    lora: bool | tuple[bool, ...] = False   # a whole pass, or per row (quadratic)
    positions: tuple[int, ...] | None = None
    group: int = 0
    last_only: bool = False
    prefill: bool = False                   # the prompt: may run on the model's prefill twin

    @property
    def key(self) -> tuple:
        """Forwards with equal keys run as one batch."""
        return (len(self.ids), self.pattern, self.write, self.lora, self.group, self.last_only,
                self.positions is None, self.prefill)


Steps = Generator[Forward, torch.Tensor, None]


class ModeError(ValueError):
    """A decoding mode the checkpoint cannot serve; the message names it and the modes it can."""


def check_mode(model: NLDModel, params: DecodeParams) -> None:
    """Raise ModeError when `params` needs a drafter the model does not have."""
    cfg = model.cfg
    if cfg.has_drafter:
        return
    need = None
    if params.mode == "diffusion":
        need = "mode 'diffusion' denoises mask tokens"
    elif params.mode == "spec" and params.spec_variant == "quadratic":
        need = "spec_variant 'quadratic' drafts with mask tokens"
    elif params.mode == "spec" and not params.lookup:
        need = "spec without context lookup drafts by diffusion"
    if need:
        name = model.source or f"this {cfg.model_type} model"
        raise ModeError(f"{name}: {need}, and this {cfg.family} checkpoint has no drafter (no mask token); "
                        f"it supports modes {', '.join(cfg.modes)} (spec drafts from the context only). "
                        f"A drafter trained for it (`tricode train --drafter-for MODEL`) adds the others")


def model_device(model: NLDModel) -> torch.device:
    """Where a model's logits live: its head's device, or the `device` a model held outside torch
    declares (engine/llama_runner.py: llama.cpp on the CPU)."""
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else model.head.weight.device


def default_block_size(model: NLDModel) -> int:
    cfg_block = model.cfg.block_size
    return cfg_block if model_device(model).type == "cuda" else min(cfg_block, CPU_BLOCK_SIZE)


def default_spec_variant(model: NLDModel) -> str:
    """Quadratic on a GPU, where a forward of B(B+1) tokens costs little more than one of B (8B model,
    block 32 on an H200: one 42 ms step instead of 56 ms for draft + verify, docs/gpu_check.md);
    linear on a CPU, where width costs time (decode 63 vs 99 ms per single-line completion at block 4,
    docs/benchmarks.md)."""
    if not model.cfg.has_drafter:
        return "linear"                     # context drafts only; the quadratic step needs mask tokens
    return "quadratic" if model_device(model).type == "cuda" else "linear"


def for_device(model: NLDModel, params: DecodeParams) -> DecodeParams:
    """`params` with the device defaults filled in: block size and spec variant."""
    return dataclasses.replace(
        params, block_size=params.block_size or default_block_size(model),
        spec_variant=default_spec_variant(model) if params.spec_variant == "auto" else params.spec_variant)


def scratch_slots(params: DecodeParams, block: int) -> int:
    """Cache slots a decode needs beyond its prompt and new tokens: its widest forward that is not
    kept (a draft, a context-draft verify, a quadratic step)."""
    width = max(block, LOOKUP_TOKENS + 1)
    return width * (block + 1) if params.mode == "spec" and params.spec_variant == "quadratic" else width


class _Run:
    """Bookkeeping shared by the decoders: emitted tokens, stop rules, interrupts, statistics."""

    def __init__(self, model: NLDModel, params: DecodeParams, prompt_ids: list[int], cancel, stop):
        self.model, self.params, self.cancel, self.stop = model, params, cancel, stop
        self.lookup = Lookup(prompt_ids) if params.mode == "spec" and params.lookup else None
        self.eos = {model.cfg.eos_token_id, *params.stop_token_ids}
        self.mask_id = model.cfg.mask_token_id
        self.device = model_device(model)
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        self.result = DecodeResult(tokens=[], stop_reason="length", mode=params.mode)
        self.done = params.max_new_tokens == 0
        self.deadline = params.deadline          # moved by _prefill when params.decode_s asks

    def interrupted(self) -> bool:
        """Checked before every forward."""
        if self.cancel is not None and self.cancel.is_set():
            self.result.stop_reason, self.done = "cancelled", True
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.result.stop_reason, self.done = "deadline", True
        return self.done

    def push(self, new: list[int]) -> bool:
        """Emit tokens in order; True once the decode is finished."""
        out = self.result.tokens
        for t in new:
            if t in self.eos:
                self.result.stop_reason, self.done = "eos", True
                break
            out.append(t)
            if len(out) >= self.params.max_new_tokens:
                self.result.stop_reason, self.done = "length", True
                break
        if self.stop is not None and out:
            cut = self.stop(out)
            if cut is not None:
                del out[cut:]
                self.result.stop_reason, self.done = "stop", True
        return self.done

    def context_draft(self) -> list[int]:
        """Draft tokens found in the context (lookup.py), [] when none or when lookup is off."""
        if self.lookup is None:
            return []
        found = self.lookup.draft(self.result.tokens, min(LOOKUP_TOKENS, self.remaining))
        costs = getattr(runner_for(self.model), "step_costs", None)
        if found and costs:       # the runner's step cost curve sizes the draft (lookup.sized_draft_length)
            found = found[:sized_draft_length(self.lookup.match_length(), costs, len(found))]
        self.result.lookup_steps += bool(found)
        return found

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.result.tokens)

    def forward(self, ids: list[int], cache: KVCache, **kw) -> Generator[Forward, torch.Tensor, torch.Tensor]:
        self.result.nfe += 1
        return (yield Forward(ids, cache, **kw))

    def verify(self, block: list[int], logits: torch.Tensor) -> tuple[int, int]:
        """(accepted drafts c, next token) for block [seed, d1..] and its causal logits [T, V]:
        greedy longest agreeing prefix + bonus, or speculative sampling at temperature > 0."""
        x = torch.tensor([block], device=self.device)
        if self.params.temperature == 0:
            accepted, bonus = verify_greedy(x, logits[None], impl=self.model.kernel_impl)
        else:
            accepted, bonus = verify_sample(x, logits[None], temperature=self.params.temperature,
                                            generator=self.generator, impl=self.model.kernel_impl)
        return int(accepted[0]), int(bonus[0])

    def pick(self, logits: torch.Tensor) -> int:
        """Next token from one row of logits: argmax, or a sample at the request's temperature."""
        if self.params.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class Decode:
    """One sequence being decoded: its pending `Forward` (None once finished) and its result."""

    def __init__(self, model: NLDModel, prompt_ids: list[int], params: DecodeParams, *,
                 cache: KVCache | None = None, cancel: threading.Event | None = None,
                 stop: Callable[[list[int]], int | None] | None = None):
        if not prompt_ids:
            raise ValueError("the prompt must hold at least one token (start it with the BOS token)")
        self.t0 = time.perf_counter()
        params = for_device(model, params)
        check_mode(model, params)
        block = params.block_size
        scratch = scratch_slots(params, block)
        need = len(prompt_ids) + params.max_new_tokens + scratch + 1
        if cache is None:
            cache = model.new_cache(need)
        elif need > cache.max_len:
            raise CacheFullError(f"this request needs up to {need} cache slots (prompt {len(prompt_ids)} + "
                                 f"{params.max_new_tokens} new + {scratch} scratch), the cache holds {cache.max_len}")
        self.cache = cache
        self.run = _Run(model, params, prompt_ids, cancel, stop)
        self.run.result.block_size = 1 if params.mode == "ar" else block
        self.pending: Forward | None = None
        self._steps = _decode(self.run, cache, prompt_ids, block)
        self.feed(None)

    @property
    def result(self) -> DecodeResult:
        return self.run.result

    @property
    def done(self) -> bool:
        return self.pending is None

    def feed(self, logits: torch.Tensor | None) -> None:
        """Hand the pending forward's logits to the decoder; it runs to its next forward or its end."""
        try:
            with torch.inference_mode():
                self.pending = self._steps.send(logits)
        except StopIteration:
            self.pending = None
            self.run.result.elapsed_ms = (time.perf_counter() - self.t0) * 1e3


class Prefill:
    """Prefill only (the daemon's prefetch): run `prompt_ids` into `cache`, reusing its common prefix,
    in causal forwards of at most `chunk` tokens, the cancel flag checked before each; nothing is
    generated. Same interface as Decode (`pending`, `feed`, `done`, `result`), so `step` runs it;
    a cancelled prefill leaves the cache holding the chunks already run, which a later prompt reuses."""

    def __init__(self, model: NLDModel, prompt_ids: list[int], *, cache: KVCache, chunk: int = 64,
                 cancel: threading.Event | None = None):
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        if len(prompt_ids) > cache.max_len:
            raise CacheFullError(f"a prefill of {len(prompt_ids)} tokens does not fit a cache of {cache.max_len}")
        self.t0 = time.perf_counter()
        self.result = DecodeResult(tokens=[], stop_reason="length", mode="prefill")
        self.pending: Forward | None = None
        self._steps = self._run(list(prompt_ids), cache, chunk, cancel)
        self.feed(None)

    @property
    def done(self) -> bool:
        return self.pending is None

    def _run(self, ids: list[int], cache: KVCache, chunk: int, cancel) -> Steps:
        keep = cache.common_prefix(ids)
        cache.crop(keep)
        self.result.reused_tokens = keep
        pos = keep
        while pos < len(ids):
            if cancel is not None and cancel.is_set():
                self.result.stop_reason = "cancelled"
                return
            piece = ids[pos:pos + chunk]
            yield Forward(piece, cache, pattern="causal", write=True, last_only=True, prefill=True)
            self.result.nfe += 1
            self.result.prefill_tokens += len(piece)
            pos += len(piece)

    def feed(self, logits: torch.Tensor | None) -> None:
        try:
            with torch.inference_mode():
                self.pending = self._steps.send(logits)
        except StopIteration:
            self.pending = None
            self.result.elapsed_ms = self.result.prefill_ms = (time.perf_counter() - self.t0) * 1e3


def run_forwards(model: NLDModel, fs: list[Forward]) -> list[torch.Tensor]:
    """Run forwards of one key as a single batched forward; logits [T, V] for each. The model's
    runner (runner.py, chosen by device) decides how: eagerly, or as a captured CUDA graph."""
    f = fs[0]
    assert all(g.key == f.key for g in fs), "only forwards of one key batch together"
    return runner_for(model).run(fs)


def generate(model: NLDModel, prompt_ids: list[int], params: DecodeParams, *, cache: KVCache | None = None,
             cancel: threading.Event | None = None,
             stop: Callable[[list[int]], int | None] | None = None) -> DecodeResult:
    """Decode one sequence: run each forward it asks for as it comes."""
    d = Decode(model, prompt_ids, params, cache=cache, cancel=cancel, stop=stop)
    while not d.done:
        d.feed(run_forwards(model, [d.pending])[0])
    return d.result


def step(model: NLDModel, decodes: list[Decode]) -> None:
    """Advance every unfinished decode by one forward: pending forwards of one key (same width,
    pattern and cache rule: AR steps, drafts, verifies, diffusion steps of one block size) run as one
    batched forward, each request on its own cache. Greedy results equal one-at-a-time decoding."""
    groups: dict[tuple, list[Decode]] = {}
    for d in decodes:
        if not d.done:
            groups.setdefault(d.pending.key, []).append(d)
    for ds in groups.values():
        for d, logits in zip(ds, run_forwards(model, [d.pending for d in ds])):
            d.feed(logits)


def generate_batch(model: NLDModel, prompts: list[list[int]], params: list[DecodeParams]) -> list[DecodeResult]:
    """Decode several sequences together (see `step`); a fresh cache for each."""
    decodes = [Decode(model, ids, p) for ids, p in zip(prompts, params, strict=True)]
    while not all(d.done for d in decodes):
        step(model, decodes)
    return [d.result for d in decodes]


def _decode(run: _Run, cache: KVCache, prompt_ids: list[int], block: int) -> Steps:
    if run.done or run.interrupted():
        return
    seed = yield from _prefill(run, cache, prompt_ids)
    if run.push([seed]):
        return
    if run.params.mode == "ar":
        yield from _decode_ar(run, cache, seed)
    elif run.params.mode == "diffusion":
        yield from _decode_diffusion(run, cache, seed, block)
    elif run.params.spec_variant == "quadratic":
        from engine.spec_quadratic import decode_quadratic
        yield from decode_quadratic(run, cache, seed, block)
    else:
        yield from _decode_spec(run, cache, seed, block)


def _prefill(run: _Run, cache: KVCache, prompt_ids: list[int]) -> Generator[Forward, torch.Tensor, int]:
    """Reuse the cached common prefix, run the rest causally, return the first new token."""
    t0 = time.perf_counter()
    keep = min(cache.common_prefix(prompt_ids), len(prompt_ids) - 1)  # at least one token yields the logit
    cache.crop(keep)
    logits = yield from run.forward(prompt_ids[keep:], cache, pattern="causal", write=True, last_only=True,
                                    prefill=True)
    run.result.reused_tokens, run.result.prefill_tokens = keep, len(prompt_ids) - keep
    seed = run.pick(logits[-1])
    run.result.prefill_ms = (time.perf_counter() - t0) * 1e3
    if run.deadline is not None and run.params.decode_s is not None:
        # a cold place's long prefill must not leave its decode no time: an answer of one token is none
        run.deadline = max(run.deadline, time.monotonic() + run.params.decode_s)
    return seed


def _decode_ar(run: _Run, cache: KVCache, token: int) -> Steps:
    while not run.interrupted():
        logits = yield from run.forward([token], cache, pattern="causal", write=True)
        token = run.pick(logits[-1])
        if run.push([token]):
            return


def _decode_diffusion(run: _Run, cache: KVCache, seed: int, block: int) -> Steps:
    """Block diffusion: the seed (already emitted) opens a block whose masks are denoised in place.

    Each step commits every masked position whose confidence reaches the threshold, and at least the
    most confident one; committed tokens are never re-masked. A causal pass over the finished block
    appends its K/V and its last logit is the next seed. Cost per block: steps + 1 forwards.
    """
    M, impl = run.mask_id, run.model.kernel_impl
    threshold = run.params.threshold if run.params.threshold is not None else DEFAULT_THRESHOLD
    while not run.done:
        tokens = torch.tensor([[seed] + [M] * min(block - 1, run.remaining)], device=run.device)
        steps = 0
        while bool((tokens == M).any()):
            if run.interrupted():
                return
            logits = (yield from run.forward(tokens[0].tolist(), cache, pattern="block", write=False,
                                             lora=run.model.cfg.denoise_with_lora))[None]
            if run.params.temperature > 0:  # sample: perturb the logits with Gumbel noise
                u = torch.rand(logits.shape, generator=run.generator, device=run.device).clamp_(1e-10, 1.0)
                logits = logits.float() / run.params.temperature - torch.log(-torch.log(u))
            tokens, _, _ = unmask_step(tokens, logits, mask_id=M, threshold=threshold, impl=impl)
            steps += 1
        run.result.denoise_steps.append(steps)
        ids = tokens[0].tolist()
        if run.push(ids[1:]) or run.interrupted():
            return
        logits = yield from run.forward(ids, cache, pattern="causal", write=True, last_only=True)
        seed = run.pick(logits[-1])
        if run.push([seed]):
            return


def _decode_spec(run: _Run, cache: KVCache, seed: int, block: int) -> Steps:
    """Linear self-speculation.

    Draft: one bidirectional pass over [seed, M x (B-1)] (LoRA on, cache read-only) fills every mask
    with its argmax: [seed, d1 .. d(B-1)].
    Verify: one causal pass over that block (LoRA off) appends its K/V; a[i], the AR prediction at
    position i, is the model's choice for token i+1. Accept the longest prefix with a[i-1] == d[i]
    (c drafts), emit d1..dc and the bonus a[c], crop the cache to old + 1 + c (the seed and the
    accepted drafts; the bonus has no K/V yet) and make the bonus the next seed.
    Greedy, this emits exactly what AR would. With temperature > 0, drafts are accepted by the
    speculative-sampling rule (accept d_i with probability p_i(d_i), else sample the residual), which
    leaves the output distributed as AR sampling.
    With `lookup`, a draft found in the context (lookup.py) replaces the draft forward: one forward
    for the step instead of two. Without a drafter (an AR checkpoint) a step with no context draft
    verifies the seed alone: one causal token, an AR step.
    """
    M = run.mask_id
    while not run.done:
        n = min(block, run.remaining + 1)  # the seed plus at most `remaining - 1` drafts and a bonus
        found = run.context_draft() if n > 1 else []
        ids = [seed] + found
        if not found and n > 1 and run.model.cfg.has_drafter:
            if run.interrupted():
                return
            draft = yield from run.forward([seed] + [M] * (n - 1), cache, pattern="block", write=False, lora=True)
            ids = [seed] + draft[1:].argmax(-1).tolist()
        if run.interrupted():
            return
        start = cache.length
        logits = (yield from run.forward(ids, cache, pattern="causal", write=True))[None]
        c, seed = run.verify(ids, logits[0])
        cache.crop(start + 1 + c)
        run.result.accept_lengths.append(c + 1)
        if run.push(ids[1:1 + c] + [seed]):
            return
