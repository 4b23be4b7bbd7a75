"""The regex fallback pre-tokenizer: any `pat_str`, with tiktoken's semantics, via `regex`.

tiktoken runs its pattern with Rust's fancy_regex. The `regex` package reads the same syntax the
same way (\\p{..} classes, \\s as White_Space, possessive and lazy quantifiers, lookaround, scoped
flags), with two differences this module removes before compiling:
  - `$` outside multi-line mode: Rust matches only at the end of the text, `regex` also before a
    final "\\n". Each such `$` becomes `\\Z` (end only).
  - `\\z` (Rust's end of text) does not exist in `regex`: it becomes `\\Z`.
Patterns with syntax that the two engines read differently and that cannot be rewritten here —
nested character classes and class set operations (`[a[b]]`, `&&`, `--`, `~~`) — raise
ValueError rather than split differently. The `regex` package may follow a newer Unicode version
than tiktoken's Rust tables: code points assigned in between can classify differently."""
from __future__ import annotations


def rust_to_python(pat_str: str) -> str:
    """`pat_str` (fancy_regex syntax) rewritten for the `regex` package; ValueError on syntax
    whose meaning differs between the two and has no rewrite."""
    multiline = _has_multiline_flag(pat_str)
    out: list[str] = []
    i, n = 0, len(pat_str)
    in_class = False
    class_start = 0
    while i < n:
        c = pat_str[i]
        if c == "\\" and i + 1 < n:
            nxt = pat_str[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]" and i > class_start:
                in_class = False
            elif c == "[" and not pat_str.startswith("[:", i):
                raise ValueError(f"pat_str {pat_str!r}: a nested character class at {i} reads differently "
                                 "in Rust's regex and the `regex` package; write it without nesting")
            elif pat_str.startswith(("&&", "--", "~~"), i):
                raise ValueError(f"pat_str {pat_str!r}: the class set operation {pat_str[i:i + 2]!r} at {i} "
                                 "reads differently in Rust's regex and the `regex` package")
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            class_start = i + 1
            if pat_str.startswith("[^", i):
                class_start += 1
            out.append(c)
            i += 1
            # A "]" right after "[" or "[^" is a literal member of the class.
            continue
        out.append("\\Z" if c == "$" and not multiline else c)
        i += 1
    if in_class:
        raise ValueError(f"pat_str {pat_str!r}: unterminated character class")
    return "".join(out)


def _has_multiline_flag(pat_str: str) -> bool:
    """Whether an inline flag group turns on multi-line mode anywhere ("(?m)", "(?im:", ...).
    Then every `$` is left as it is: both engines read multi-line `$` as before "\\n" or at the end."""
    i = pat_str.find("(?")
    while i >= 0:
        j = i + 2
        while j < len(pat_str) and pat_str[j].isalpha():
            if pat_str[j] == "m":
                return True
            j += 1
        i = pat_str.find("(?", i + 2)
    return False


class RegexSplitter:
    """Splits text into the pieces tiktoken's regex finds (empty matches dropped: tiktoken cannot
    encode an empty piece)."""

    def __init__(self, pat_str: str):
        import regex

        self.pat_str = pat_str
        try:
            self._re = regex.compile(rust_to_python(pat_str))
        except regex.error as err:
            raise ValueError(f"pat_str {pat_str!r} does not compile: {err}") from None

    def pieces(self, text: str) -> list[str]:
        # findall returns the groups' text when the pattern has groups; the whole match is wanted.
        found = [m.group() for m in self._re.finditer(text)] if self._re.groups else self._re.findall(text)
        if "" in found:
            found = [p for p in found if p]
        return found

    def __reduce__(self):
        return (RegexSplitter, (self.pat_str,))
