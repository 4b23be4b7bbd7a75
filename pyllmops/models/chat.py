"""SmolLM2's ChatML chat template, built as token ids.

The GGUF's `tokenizer.chat_template` renders each message as
`<|im_start|>{role}\n{content}<|im_end|>\n`, prepends a default system message when the first
message is not one, and ends with `<|im_start|>assistant\n` for generation. The template is built
here piece by piece: the special tokens as ids and the text between them encoded as plain text, so
a user message that contains "<|im_end|>" stays text (no prompt injection); the ids equal those
of encoding the rendered string with its special tokens allowed.
"""
from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ROLES = ("system", "user", "assistant")
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


def special_id(tokenizer, token: str) -> int:
    """The id of special token `token` (e.g. '<|im_end|>') in `tokenizer`."""
    ids = tokenizer.encode(token, allowed_special={token})
    if len(ids) != 1:
        raise ValueError(f"tokenizer has no special token {token!r}")
    return ids[0]


def render(messages: list[dict[str, str]], add_generation_prompt: bool = True, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """The chat as text, exactly as the GGUF's Jinja template renders it."""
    _check(messages)
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def encode_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of render(messages, ...), special tokens as ids, message text as plain text."""
    _check(messages)
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    start, end = special_id(tokenizer, IM_START), special_id(tokenizer, IM_END)
    newline = tokenizer.encode_ordinary("\n")
    ids: list[int] = []
    for m in messages:
        ids += [start, *tokenizer.encode_ordinary(f"{m['role']}\n{m['content']}"), end, *newline]
    if add_generation_prompt:
        ids += [start, *tokenizer.encode_ordinary("assistant\n")]
    return ids


def chat_prompt(tokenizer, user: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Ids of a one-turn chat asking `user`, ready for generation."""
    if not user.strip():
        raise ValueError("prompt must not be empty")
    return encode_chat(tokenizer, [{"role": "user", "content": user}], system_prompt=system_prompt)


def stop_ids(tokenizer) -> list[int]:
    """Tokens that end an assistant turn: <|im_end|> (the chat's end of message) and <|endoftext|>."""
    return [special_id(tokenizer, IM_END), special_id(tokenizer, END_OF_TEXT)]


def _check(messages) -> None:
    if not messages:
        raise ValueError("messages must not be empty")
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"each message needs a role in {ROLES} and a str content, got {m!r}")
