"""What the reading views show of a document: a cited passage split around its quote, and a document's
chunks as continuous text."""

from __future__ import annotations


def highlight(text: str, quote: str) -> tuple[str, str, str]:
    """The passage split around the quoted sentence (compared with spacing normalised)."""
    quote = quote.rstrip("…")
    start = text.find(quote)
    if start < 0:
        # The quote was taken with runs of spaces collapsed: find it word by word.
        words = quote.split()
        if words:
            start = text.find(words[0])
            while start >= 0:
                end = _match_words(text, start, words)
                if end is not None:
                    return text[:start], text[start:end], text[end:]
                start = text.find(words[0], start + 1)
        return text, "", ""
    return text[:start], text[start : start + len(quote)], text[start + len(quote) :]


def _match_words(text: str, start: int, words: list[str]) -> int | None:
    position = start
    for word in words:
        while position < len(text) and text[position].isspace():
            position += 1
        if not text.startswith(word, position):
            return None
        position += len(word)
    return position


def reading_passages(chunks) -> list[dict]:
    """The chunks as continuous text: the overlap a chunk repeats from the one before is not shown twice (a chunk's
    own text is its last `char_end - char_start` characters), a chunk that continues a table keeps the header row
    the chunker repeated for it (so each passage's rows read as a table), and a heading is shown where the section
    changes."""
    passages = []
    previous_path: list[str] | None = None
    for chunk in chunks:
        own_length = max(0, min(chunk.char_end - chunk.char_start, len(chunk.text)))
        text = chunk.text[len(chunk.text) - own_length :] if own_length else chunk.text
        first_line = chunk.text.split("\n", 1)[0]
        own_first_line = text.lstrip().split("\n", 1)[0]
        if text != chunk.text and _is_row(own_first_line) and _is_row(first_line) and first_line != own_first_line:
            text = first_line + "\n" + text.lstrip()
        passages.append(
            {
                "chunk": chunk,
                "text": text.strip(),
                "heading": chunk.heading_path if chunk.heading_path != previous_path else None,
            }
        )
        previous_path = chunk.heading_path
    return passages


def _is_row(line: str) -> bool:
    return "|" in line.strip().strip("|")
