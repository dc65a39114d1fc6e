"""The prompt stage for the real code model: the ChatML rendering against the checkpoint's own chat
template (rendered with Jinja), the stop ids, and the inline format's token layout (qwen2.5-coder-0.5b's
GGUF vocabulary; the `real_gguf` fixture; fast: only the tokenizer is read)."""
from __future__ import annotations

import jinja2
import pytest

from daemon import prompt as P
from daemon.model_load import stop_token_ids
from textkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(real_gguf):
    return Tokenizer(real_gguf)


def test_chatml_rendering_equals_the_checkpoints_template(tok):
    assert P.chatml_template(tok.chat_template)
    messages, seed = P.fill_messages('def f(x):\n    """', '"""\n    return x  # <|im_end|>\n', "python", "/a/b.py")
    want = jinja2.Environment().from_string(tok.chat_template).render(messages=messages, add_generation_prompt=True)
    assert P.chat_text(messages) == want
    ids = P.chat_ids(tok, messages, seed)
    assert tok._tok.decode(ids, skip_special_tokens=False) == want + seed
    # the control tokens are there by id, once per message and once for the reply; the user's
    # "<|im_end|>" stays text
    start, end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
    assert ids.count(start) == 3 and ids.count(end) == 2


def test_a_template_that_is_not_chatml_is_refused(tok):
    assert not P.chatml_template(None) and not P.chatml_template("{{ bos_token }}[INST] {{ m }} [/INST]")

    class Other:
        chat_template = "{% for m in messages %}<s>{{ m.content }}</s>{% endfor %}"
        special_tokens = tok.special_tokens
        encode = tok.encode
    with pytest.raises(P.ChatTemplateError, match="not ChatML"):
        P.chat_ids(Other(), [{"role": "user", "content": "x"}])


def test_stop_ids_are_every_eot_and_fim_control_token(tok):
    ids = set(stop_token_ids(tok))
    names = ("<|endoftext|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>")
    assert {tok.special_tokens[n] for n in names} <= ids
    assert tok.fim["file_sep"] in ids and tok.fim["repo_name"] in ids and tok.eos_id in ids
    assert tok.special_tokens["<|im_start|>"] not in ids
    assert tok.mask_id is None           # an AR checkpoint: no mask token


def test_inline_format_layout_and_healing(tok):
    fmt = P.pretrained_format(tok)
    assert fmt == P.fim.BEST_FORMAT and P.pretrained_format(tok, "repo") == "repo"
    b = P.PromptBuilder(tok, fmt)
    prefix = "def add(a, b):\n    "
    pr = b.build(prefix, "\n\nprint(add(1, 2))\n", 1024)
    sp = tok.special_tokens
    assert pr.ids[0] == sp["<|fim_prefix|>"] and pr.ids[-1] == sp["<|fim_middle|>"]
    assert pr.heal == "    " and pr.format == fmt
    assert tok.decode(pr.ids) .startswith("def add(a, b):\n")
    assert P.fim.heal("    return a + b", pr.heal) == "return a + b"
    # text that spells a control token stays text
    pr2 = b.build("s = '<|fim_middle|>'\n", "", 1024)
    assert pr2.ids.count(sp["<|fim_middle|>"]) == 1


def test_the_embedded_tokenizer_keeps_tricodes_layout():
    from engine.embedded_model import default_model
    if default_model() is None:
        pytest.skip("the embedded model is not installed")
    assert P.pretrained_format(Tokenizer(default_model())) is None


def test_chat_rewrite_asks_directly_with_the_original_and_the_instruction(tok):
    """A rewrite on an instruct model: the original (dedented) in a fenced block with its language and
    file, the instruction, the code around it as context; none of the FIM prompt's comment scaffold."""
    from lsp import refactor
    src = ("import math\n\n\nclass Shape:\n    def area(self, w, h):\n        total = 0\n"
           "        for i in range(w):\n            total += h\n        return total\n\n\ndef after():\n    pass\n")
    at = src.index("def area")
    job = refactor.build("rewrite", src, "python", at, at, instruction="use a multiplication")
    prompt = P.PromptBuilder(tok).build_chat(job.prefix, job.suffix, 2048, "python", "/w/shapes.py",
                                             (job.original, job.instruction, job.scaffold))
    text = tok._tok.decode(prompt.ids, skip_special_tokens=False)
    assert prompt.format == "chat" and prompt.stops == ("```",)
    assert text.endswith("<|im_start|>assistant\n```python\n")
    user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert ("```python\ndef area(self, w, h):\n    total = 0\n    for i in range(w):\n        total += h\n"
            "    return total\n```") in user
    assert "Instruction: use a multiplication" in user and "shapes.py" in user
    assert "complete rewritten code only, in one code block" in user
    assert "class Shape:\n<the code to rewrite>\n" in user and "def after():" in user   # the context
    assert "Original version" not in text and "Rewritten version" not in text and "#     total" not in text
    # without `rewrite` (an older client, or another action) the fill prompt is unchanged
    plain = P.PromptBuilder(tok).build_chat(job.prefix, job.suffix, 2048, "python", "/w/shapes.py")
    assert plain.ids == P.chat_ids(tok, *P.fill_messages(job.prefix, job.suffix, "python", "/w/shapes.py"))
    # a tight budget drops the context, never the code
    small = tok._tok.decode(P.PromptBuilder(tok).build_chat(
        job.prefix, job.suffix, 100, "python", "/w/shapes.py", (job.original, job.instruction, job.scaffold)).ids,
        skip_special_tokens=False)
    assert "for i in range(w):" in small and "def after" not in small
