"""GPT-2's byte <-> printable-character mapping, in which HF tokenizer.json and GGUF files store
byte-level tokens and merges: printable Latin-1 bytes stand for themselves, the other 68 bytes
take the code points from U+0100 on, in byte order."""
from __future__ import annotations

import functools


@functools.cache
def byte_to_char() -> dict[int, str]:
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


@functools.cache
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


def token_bytes(token: str) -> bytes:
    """Bytes of a byte-level token string; ValueError if a character is outside the mapping."""
    table = char_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError as err:
        raise ValueError(f"token {token!r} is not in GPT-2 byte-level form (character {err.args[0]!r})") from None
