"""Chat prompts for instruct models (part of daemon.prompt, the one home of every prompt format).

Refactors on an instruct model go through its chat template. The template is a Jinja program in the
checkpoint (tokenizer.chat_template); rather than run Jinja in the daemon, this renders the one
layout the supported families use, ChatML (Qwen2 / Qwen2.5):

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n

`chatml_template` checks the checkpoint's template lays messages out that way (tests render the real
template with Jinja and compare); <|im_start|> and <|im_end|> are control tokens, put in by id, and
the reply ends at <|im_end|> (one of the tokenizer's eot ids, daemon/worker.py stop_token_ids).
It knows nothing of models or budgets (PromptBuilder.build_chat clips the pieces); no torch.
"""
from __future__ import annotations

import textwrap
from pathlib import PurePath
from typing import Mapping, Sequence


IM_START, IM_END = "<|im_start|>", "<|im_end|>"
FILL = "<FILL>"
CHAT_SYSTEM = ("You are a coding assistant inside a code editor. You write code only, in the language, "
               "style and indentation of the file you are given.")


class ChatTemplateError(ValueError):
    """The checkpoint has no chat template this module can render."""


def chatml_template(template: str | None) -> bool:
    """Does the chat template (Jinja source) lay a message out as ChatML: `<|im_start|>` + role +
    newline + content + `<|im_end|>` + newline, with `<|im_start|>assistant\\n` as the generation prompt?"""
    if not template:
        return False
    return (IM_START in template and IM_END in template and "'<|im_start|>assistant\\n'" in template
            and "message.role + '\\n' + message.content + '<|im_end|>'" in template.replace('"', "'"))


def chat_text(messages: Sequence[Mapping[str, str]], assistant_prefix: str = "") -> str:
    """The ChatML text of `messages` with the generation prompt (and the start of the reply)."""
    body = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return f"{body}{IM_START}assistant\n{assistant_prefix}"


def chat_ids(tok, messages: Sequence[Mapping[str, str]], assistant_prefix: str = "") -> list[int]:
    """`chat_text` as token ids: the control tokens by id, the text between them encoded as text (so a
    `<|im_end|>` written in the user's code stays text)."""
    if not chatml_template(getattr(tok, "chat_template", None)):
        raise ChatTemplateError("the checkpoint's chat template is not ChatML (<|im_start|>role ... <|im_end|>); "
                                "refactors use the FIM prompt instead")
    start, end = tok.special_tokens[IM_START], tok.special_tokens[IM_END]
    ids: list[int] = []
    for m in messages:
        ids += [start] + tok.encode(f"{m['role']}\n{m['content']}") + [end] + tok.encode("\n")
    return ids + [start] + tok.encode(f"assistant\n{assistant_prefix}")


def fill_messages(prefix: str, suffix: str, language: str = "", path: str = "") -> tuple[list[dict], str]:
    """(messages, assistant_prefix) asking an instruct model for the code between prefix and suffix.
    The reply is seeded with the code fence and the cursor's line up to the cursor, so that what the
    model writes next is the missing code itself, starting at the cursor; it ends at the closing fence."""
    lang = (language or "").lower()
    where = f" ({PurePath(path).name})" if path else ""
    user = (f"Here is a {lang or 'source'} file{where} with a part missing at {FILL}. Write the missing code: "
            f"reply with one ```{lang} block that starts with the line holding {FILL} and ends where the "
            f"missing part ends.\n\n```{lang}\n{prefix}{FILL}{suffix}\n```")
    line = prefix[prefix.rfind("\n") + 1:]
    return [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": user}], f"```{lang}\n{line}"


def rewrite_messages(original: str, instruction: str, language: str = "", path: str = "",
                     before: str = "", after: str = "") -> tuple[list[dict], str]:
    """(messages, assistant_prefix) asking an instruct model to rewrite `original` as instructed: the
    code (dedented) in a fenced block with its language and file, the instruction, and the code around
    it (`before`, `after`; may be empty) for context. The reply is seeded with the opening fence, so
    what the model writes is the rewritten code, up to the closing fence (the caller re-indents it)."""
    lang = (language or "").lower()
    where = f" from {PurePath(path).name}" if path else ""
    context = ""
    if before.strip() or after.strip():
        context = (f"For context, the code around it in the file:\n\n```{lang}\n{before}"
                   f"<the code to rewrite>\n{after.strip(chr(10))}\n```\n\n")
    user = (f"{context}Rewrite this {lang or 'source'} code{where}:\n\n```{lang}\n"
            f"{textwrap.dedent(original).strip(chr(10))}\n```\n\nInstruction: {instruction}\n\n"
            f"Reply with the complete rewritten code only, in one code block.")
    return [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": user}], f"```{lang}\n"
