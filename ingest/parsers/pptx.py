"""PowerPoint (.pptx) files: one section per slide (its title as the heading, then its text, tables and speaker
notes), each block carrying its slide number as its page so that citations name the slide."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import pptx
from pptx.enum.shapes import MSO_SHAPE_TYPE, PP_PLACEHOLDER

from ingest.parsers.common import (
    LIST,
    LIST_INDENT,
    PARAGRAPH,
    PPTX,
    TABLE,
    BlockCollector,
    ParsedDocument,
    ParseError,
    clean_inline,
    finish_document,
    open_office_zip,
    table_row,
)

SLIDE_LEVEL = 1
NOTES_LEVEL = 2
NOTES_HEADING = "Notes"
_TITLE_PLACEHOLDERS = frozenset({PP_PLACEHOLDER.TITLE, PP_PLACEHOLDER.CENTER_TITLE, PP_PLACEHOLDER.VERTICAL_TITLE})
# Slide numbers, dates and footers repeat on every slide and say nothing about it.
_CHROME_PLACEHOLDERS = frozenset({PP_PLACEHOLDER.SLIDE_NUMBER, PP_PLACEHOLDER.DATE, PP_PLACEHOLDER.FOOTER})


def _corrupt_pptx() -> ParseError:
    return ParseError(
        "corrupt_pptx",
        "The PowerPoint file is damaged or not really a .pptx; open it in PowerPoint, save it again as .pptx "
        "and upload it.",
    )


def _placeholder_type(shape: Any) -> Any:
    if not shape.is_placeholder:
        return None
    try:
        return shape.placeholder_format.type
    except ValueError:  # a placeholder element without its type
        return None


def _reading_order(shapes: Iterable[Any]) -> list[Any]:
    """Shapes top to bottom, then left to right: the order people read a slide in (the file keeps z-order)."""
    return sorted(shapes, key=lambda shape: (shape.top or 0, shape.left or 0))


def _walk(shapes: Iterable[Any]) -> Iterator[Any]:
    for shape in _reading_order(shapes):
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _walk(shape.shapes)
        else:
            yield shape


def _text_frame_block(frame: Any) -> tuple[str, str] | None:
    """A text box as one paragraph, or as a list when it holds several (slides are mostly bullets)."""
    lines = [(paragraph.level, clean_inline(paragraph.text)) for paragraph in frame.paragraphs]
    lines = [(level, text) for level, text in lines if text]
    if not lines:
        return None
    if len(lines) == 1:
        return PARAGRAPH, lines[0][1]
    return LIST, "\n".join(f"{LIST_INDENT * level}- {text}" for level, text in lines)


def _table_text(table: Any) -> str:
    rows = []
    for row in table.rows:
        cells = []
        for cell in row.cells:
            # a merged cell's spanned neighbours repeat nothing worth reading
            cells.append("" if cell.is_spanned else cell.text)
        text = table_row(cells)
        if text:
            rows.append(text)
    return "\n".join(rows)


def _slide(collector: BlockCollector, slide: Any, number: int) -> str | None:
    """Emit one slide's blocks; return its title."""
    shapes = list(_walk(slide.shapes))
    title_shape = next((s for s in shapes if _placeholder_type(s) in _TITLE_PLACEHOLDERS and s.has_text_frame), None)
    title = clean_inline(title_shape.text_frame.text) if title_shape is not None else ""
    collector.heading(title or f"Slide {number}", SLIDE_LEVEL, page=number)
    before = len(collector.blocks)
    for shape in shapes:
        if shape is title_shape or _placeholder_type(shape) in _CHROME_PLACEHOLDERS:
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            collector.add(TABLE, _table_text(shape.table), page=number)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            block = _text_frame_block(shape.text_frame)
            if block is not None:
                collector.add(block[0], block[1], page=number)
    if len(collector.blocks) == before:
        if title:
            # A slide of nothing but its title says it in the title; headings are only context to the chunker.
            collector.add(PARAGRAPH, title, page=number)
        elif not slide.has_notes_slide:
            collector.blocks.pop()  # a blank slide is no section (and a deck of them has no text)
    if slide.has_notes_slide:
        notes_frame = slide.notes_slide.notes_text_frame
        notes = [clean_inline(p.text) for p in notes_frame.paragraphs] if notes_frame is not None else []
        notes = [text for text in notes if text]
        if notes:
            collector.heading(NOTES_HEADING, NOTES_LEVEL, page=number)
            for text in notes:
                collector.add(PARAGRAPH, text, page=number)
    return title or None


def parse_pptx(data: bytes, *, max_uncompressed_bytes: int, max_ratio: int) -> ParsedDocument:
    open_office_zip(
        data,
        kind="PowerPoint file",
        main_part="ppt/presentation.xml",
        corrupt=_corrupt_pptx(),
        max_uncompressed_bytes=max_uncompressed_bytes,
        max_ratio=max_ratio,
    ).close()
    collector = BlockCollector()
    try:
        presentation = pptx.Presentation(io.BytesIO(data))
        titles = [_slide(collector, slide, number) for number, slide in enumerate(presentation.slides, 1)]
        core_title = clean_inline(presentation.core_properties.title or "")
    except ParseError:
        raise
    except Exception as exc:  # python-pptx raises KeyError, ValueError, lxml errors... on damaged parts
        raise _corrupt_pptx() from exc
    first_title = next((title for title in titles if title), None)
    return finish_document(collector, PPTX, title=core_title or first_title, page_count=len(titles))
