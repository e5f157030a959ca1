"""Optical character recognition for page images: scanned PDF pages without a text layer and uploaded images.

The engine is Debian's Tesseract 5 (package `tesseract-ocr` with its English model, `tesseract-ocr-eng`), run
through pytesseract, one process per page, with a time limit that kills it. It was measured against RapidOCR
(PP-OCRv4 ONNX models in the `rapidocr-onnxruntime` wheel) on kb's own pages: Tesseract had a character error
rate under 1 % where RapidOCR's model (trained for Chinese) ran English words together (10-22 %), in half the
time and a fifth of the memory (tests/bench/test_ocr_bench.py, README "OCR"). `make run` installs it.

A page is read into words; words on the same baseline band are a line (left to right), a vertical gap wider
than a line splits paragraphs, and a line whose words stand apart by several character widths is a table row
(written "a | b | c" as the other parsers write table rows). Each page says whether it was read and with what
confidence; a page that cannot be read (too large, nothing legible, below the confidence floor, over its time)
is reported with the reason, never returned silently empty.

The thresholds are settings (`KB_OCR_*`, see kb/settings.py); this module reads them when it runs, and the
caller may report progress through `ocr_progress` (the worker writes it to the document, with a heartbeat).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ingest.parsers.common import (
    HEADING_MAX_CHARS,
    HEADING_MAX_WORDS,
    LIST,
    PARAGRAPH,
    TABLE,
    BlockCollector,
    ParsedDocument,
    ParseError,
)

logger = logging.getLogger(__name__)

ENGINE_NAME = "Tesseract 5"

# Defaults of the KB_OCR_* settings (kb/settings.py says how each was chosen).
DEFAULT_MIN_CONFIDENCE = 0.75
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_PAGE_SECONDS = 60.0
DEFAULT_DPI = 200
# Fewer characters than this on a page is no text (a speck or a stamp read as a letter or two).
DEFAULT_MIN_CHARS = 3

# Layout: boxes whose vertical centres are within this share of a line's height sit on one line; a gap wider
# than this many line heights between two lines starts a new paragraph; boxes on a line separated by more than
# this many character widths are separate table cells.
SAME_LINE_OVERLAP = 0.5
PARAGRAPH_GAP_LINES = 0.9
CELL_GAP_CHARS = 2.5
# A line this many times as tall as the page's median line is a heading of level 1, or of level 2 (a 16 pt title
# and a 13 pt section heading over 11 pt body text measure about 1.45 and 1.2).
HEADING_HEIGHT_RATIO = (1.35, 1.12)
# ... and a heading is short: a line wider than this share of the page's widest line is body text.
HEADING_MAX_WIDTH_SHARE = 0.7
# Lines of at least this many words measure the page's skew.
SKEW_MIN_WORDS = 4
BULLETS = ("• ", "- ", "· ", "» ", "o ")

# Called as (pages done, pages to read) before each page and at the end.
ProgressCallback = Callable[[int, int], None]
ocr_progress: ContextVar[ProgressCallback | None] = ContextVar("ocr_progress", default=None)


@dataclass(frozen=True)
class OcrLimits:
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    max_pixels: int = DEFAULT_MAX_PIXELS
    page_seconds: float = DEFAULT_PAGE_SECONDS
    dpi: int = DEFAULT_DPI
    min_chars: int = DEFAULT_MIN_CHARS

    @classmethod
    def from_settings(cls) -> OcrLimits:
        from django.conf import settings

        return cls(
            min_confidence=getattr(settings, "KB_OCR_MIN_CONFIDENCE", DEFAULT_MIN_CONFIDENCE),
            max_pixels=getattr(settings, "KB_OCR_MAX_PIXELS", DEFAULT_MAX_PIXELS),
            page_seconds=getattr(settings, "KB_OCR_PAGE_SECONDS", DEFAULT_PAGE_SECONDS),
            dpi=getattr(settings, "KB_OCR_DPI", DEFAULT_DPI),
        )


@dataclass(frozen=True)
class OcrBox:
    text: str
    confidence: float
    left: float
    top: float
    right: float
    bottom: float
    line: tuple[int, ...] = ()  # the engine's own line this word is on

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2


@dataclass(frozen=True)
class OcrResult:
    """What the engine read on one image: its boxes in reading order."""

    boxes: tuple[OcrBox, ...]
    seconds: float

    @property
    def text(self) -> str:
        return "\n".join(" ".join(box.text for box in line) for line in _lines(self.boxes))

    @property
    def confidence(self) -> float | None:
        """Mean confidence weighted by characters (a long line counts more than a stray mark)."""
        chars = sum(len(box.text) for box in self.boxes)
        if not chars:
            return None
        return sum(box.confidence * len(box.text) for box in self.boxes) / chars


@dataclass(frozen=True)
class OcrPage:
    page: int
    confidence: float | None = None
    chars: int = 0
    problem: str = ""  # why the page could not be read; empty when it was

    @property
    def read(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class OcrReport:
    """Which pages OCR read, with what confidence, and which it could not read and why."""

    engine: str = ENGINE_NAME
    pages: tuple[OcrPage, ...] = field(default_factory=tuple)

    @property
    def read_pages(self) -> list[int]:
        return [page.page for page in self.pages if page.read]

    @property
    def unreadable(self) -> list[OcrPage]:
        return [page for page in self.pages if not page.read]

    @property
    def mean_confidence(self) -> float | None:
        read = [page for page in self.pages if page.read and page.confidence is not None]
        chars = sum(page.chars for page in read)
        if not chars:
            return None
        return sum((page.confidence or 0) * page.chars for page in read) / chars

    def as_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "pages": [
                {
                    "page": p.page,
                    "confidence": None if p.confidence is None else round(p.confidence, 3),
                    "chars": p.chars,
                    "problem": p.problem,
                }
                for p in self.pages
            ],
        }


@dataclass
class OcrParsedDocument(ParsedDocument):
    """A parsed document some of whose pages were read by OCR."""

    ocr: OcrReport = field(default_factory=OcrReport)


def with_ocr(document: ParsedDocument, report: OcrReport) -> ParsedDocument:
    """`document` carrying the OCR report (unchanged when no page needed OCR)."""
    if not report.pages:
        return document
    return OcrParsedDocument(**vars(document), ocr=report)


def ocr_report_of(document: ParsedDocument) -> OcrReport | None:
    return document.ocr if isinstance(document, OcrParsedDocument) else None


# --- the engine ----------------------------------------------------------------------------------------------


TESSERACT_LANGUAGE = "eng"
# Page segmentation 3 (automatic, no orientation detection) keeps paragraphs and table cells; the layout here
# orders the words. One thread per page: a worker process uses one core, as embedding does.
TESSERACT_CONFIG = "--psm 3"


# Ruling lines of tables make Tesseract drop the cells they box (at 300 dpi it lost "38 EUR" in a ruled cell):
# dark runs longer than this share of the page's width (horizontal) or height (vertical) are whitened first.
# Letters' strokes are far shorter (a 16 pt capital is ~1.5 % of an A4 page's height); a skewed rule breaks into
# short steps and is left as it is (Tesseract then reads around it, as without this step).
RULE_MIN_WIDTH_SHARE = 1 / 20
RULE_MIN_HEIGHT_SHARE = 1 / 30
RULE_DARK_LEVEL = 170  # lighter than text's threshold: a thin rule blurred by a scan is grey, not black
TEXT_DARK_LEVEL = 128
# What a leftover rule or speck reads as: stripped from a word's ends, and a word of nothing else is dropped.
RULE_CHARS = "|{}[]_~`"


# Skew: the angle (in degrees, within ±DESKEW_MAX_DEGREES, by DESKEW_STEP_DEGREES) at which the page's dark
# pixels fall into the sharpest rows, found on a copy about DESKEW_SAMPLE_WIDTH pixels wide (~0.1 s). A skewed
# ruled table lost most of its cells (at 300 and 150 dpi with 1.2° of skew) until pages were straightened.
DESKEW_MAX_DEGREES = 4.0
DESKEW_STEP_DEGREES = 0.2
DESKEW_MIN_DEGREES = 0.3
DESKEW_SAMPLE_WIDTH = 800


def straightened(image: Any) -> Any:
    """The image in greyscale, rotated so that its lines of text are level."""
    import numpy as np
    from PIL import Image

    grey = image.convert("L")
    factor = max(1, grey.size[0] // DESKEW_SAMPLE_WIDTH)
    sample = grey.reduce(factor).point(lambda value: 255 if value < TEXT_DARK_LEVEL else 0)
    best, best_score = 0.0, -1.0
    steps = int(DESKEW_MAX_DEGREES / DESKEW_STEP_DEGREES)
    for step in range(-steps, steps + 1):
        angle = step * DESKEW_STEP_DEGREES
        rows = np.asarray(sample.rotate(angle, resample=Image.Resampling.NEAREST), dtype=np.float32).sum(axis=1)
        score = float(np.square(np.diff(rows)).sum())  # sharp row edges: text lines are level
        if score > best_score:
            best, best_score = angle, score
    if abs(best) < DESKEW_MIN_DEGREES:
        return grey
    return grey.rotate(best, resample=Image.Resampling.BICUBIC, fillcolor=255)


def without_rules(image: Any) -> Any:
    """The image in greyscale with long straight lines (table rules, underlines, frames) turned white."""
    import numpy as np
    from PIL import Image

    grey = image.convert("L")
    mask = grey.point(lambda value: 255 if value < RULE_DARK_LEVEL else 0)
    dark = np.asarray(mask) > 0
    width, height = grey.size
    rules = _long_runs(mask, dark, max(2, int(width * RULE_MIN_WIDTH_SHARE)), horizontal=True)
    rules |= _long_runs(mask, dark, max(2, int(height * RULE_MIN_HEIGHT_SHARE)), horizontal=False)
    if not rules.any():
        return grey
    # A rule's anti-aliased edges (a scan, a straightened page) are lighter than the dark level: widen it by a pixel.
    rules[1:, :] |= rules[:-1, :].copy()
    rules[:-1, :] |= rules[1:, :].copy()
    rules[:, 1:] |= rules[:, :-1].copy()
    rules[:, :-1] |= rules[:, 1:].copy()
    cleaned = np.asarray(grey).copy()
    cleaned[rules] = 255
    return Image.fromarray(cleaned)


def _long_runs(mask: Any, dark: Any, length: int, *, horizontal: bool) -> Any:
    """Dark pixels on a run of `length` or more along one direction (and none shorter than two thirds of it). A
    run that long covers two whole aligned blocks of a third of its length in a row; Pillow averages the blocks
    (fast, in C), and the dark pixels of those blocks and their two neighbours along the run are the rule."""
    import numpy as np

    block = max(1, length // 3)
    axis = 1 if horizontal else 0
    means = np.asarray(mask.reduce((block, 1) if horizontal else (1, block)))
    single = means == 255
    full = np.zeros_like(single)
    if horizontal:
        pair = single[:, :-1] & single[:, 1:]
        full[:, :-1] |= pair
        full[:, 1:] |= pair
    else:
        pair = single[:-1, :] & single[1:, :]
        full[:-1, :] |= pair
        full[1:, :] |= pair
    near = full.copy()
    if horizontal:
        near[:, 1:] |= full[:, :-1]
        near[:, :-1] |= full[:, 1:]
    else:
        near[1:, :] |= full[:-1, :]
        near[:-1, :] |= full[1:, :]
    spread = np.repeat(near, block, axis=axis)
    spread = spread[:, : dark.shape[1]] if horizontal else spread[: dark.shape[0], :]
    if spread.shape != dark.shape:  # the image's last partial block: Pillow averaged it as a smaller block
        spread = np.pad(spread, [(0, dark.shape[0] - spread.shape[0]), (0, dark.shape[1] - spread.shape[1])])
    return spread & dark


class OcrUnavailable(ParseError):
    def __init__(self) -> None:
        super().__init__(
            "ocr_unavailable",
            "This file needs OCR, but the OCR engine (Debian package tesseract-ocr) is not installed on the "
            "server; ask the administrator to run `make run` as root (it installs it), then Reindex the document.",
        )


class OcrTimeout(Exception):
    pass


def ocr_image(image: Any, *, timeout: float = DEFAULT_PAGE_SECONDS, dpi: int | None = None) -> OcrResult:
    """Read one PIL image into word boxes. An image without text gives an empty result, not an error."""
    import pytesseract

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    image = without_rules(straightened(image))
    config = TESSERACT_CONFIG + (f" --dpi {dpi}" if dpi else "")
    start = time.perf_counter()
    try:
        data = pytesseract.image_to_data(
            image, lang=TESSERACT_LANGUAGE, config=config, timeout=timeout, output_type=pytesseract.Output.DICT
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise OcrUnavailable() from exc
    except RuntimeError as exc:
        if "timeout" in str(exc).lower():
            raise OcrTimeout() from exc
        raise
    boxes = []
    for index, text in enumerate(data["text"]):
        confidence = float(data["conf"][index])
        text = text.strip().strip(RULE_CHARS)
        if text and confidence >= 0:
            left, top = data["left"][index], data["top"][index]
            line = (data["block_num"][index], data["par_num"][index], data["line_num"][index])
            boxes.append(
                OcrBox(
                    text.strip(),
                    confidence / 100,
                    left,
                    top,
                    left + data["width"][index],
                    top + data["height"][index],
                    line,
                )
            )
    return OcrResult(tuple(boxes), time.perf_counter() - start)


# --- images in, pages out ------------------------------------------------------------------------------------


def open_image(data: bytes) -> Any:
    """The image in `data`, or ParseError("corrupt_image") when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own guard, far above KB_OCR_MAX_PIXELS; below it the caller checks the size from the header.
        raise ParseError(
            "image_too_large",
            "This image has far too many pixels to be read by OCR; scan it at 300 dpi or less and upload it again.",
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ParseError(
            "corrupt_image",
            "The image is damaged or not in a format we can read; save it again as PNG, JPEG or TIFF and upload it.",
        ) from exc
    return image


def too_large_problem(width: int, height: int, limits: OcrLimits) -> str:
    megapixels = width * height / 1_000_000
    return (
        f"the page image is {width}×{height} pixels ({megapixels:.0f} megapixels), above the "
        f"{limits.max_pixels / 1_000_000:.0f}-megapixel limit for OCR; scan it at 300 dpi or less"
    )


def read_page(
    image: Any, page: int, collector: BlockCollector, limits: OcrLimits, *, dpi: int | None = None
) -> OcrPage:
    """OCR one page image into `collector` (blocks carry `page`); return what happened on that page."""
    width, height = image.size
    if width * height > limits.max_pixels:
        return OcrPage(page, problem=too_large_problem(width, height, limits))
    try:
        result = ocr_image(image, timeout=limits.page_seconds, dpi=dpi)
    except OcrTimeout:
        return OcrPage(page, problem=f"reading it took longer than the {limits.page_seconds:g} s limit per page")
    chars = sum(len(box.text) for box in result.boxes)
    confidence = result.confidence
    if chars < limits.min_chars or confidence is None:
        return OcrPage(page, confidence, chars, "no legible text was found on it")
    if confidence < limits.min_confidence:
        return OcrPage(
            page,
            confidence,
            chars,
            f"the text read has a confidence of {confidence:.0%}, below the {limits.min_confidence:.0%} needed "
            "(a blurred, faint or noisy scan?)",
        )
    layout_blocks(result.boxes, collector, page)
    return OcrPage(page, confidence, chars)


@contextlib.contextmanager
def progress(total: int) -> Iterator[Callable[[int], None]]:
    """Report (done, total) through `ocr_progress`, if the caller set one."""
    callback = ocr_progress.get()

    def step(done: int) -> None:
        if callback is not None:
            callback(done, total)

    step(0)
    yield step
    step(total)


def unreadable_error(report: OcrReport) -> ParseError:
    """Nothing could be read on any page: the document fails with each page's reason."""
    reasons = "; ".join(f"page {page.page}: {page.problem}" for page in report.unreadable[:5])
    more = len(report.unreadable) - 5
    if more > 0:
        reasons += f"; and {more} more"
    return ParseError(
        "ocr_unreadable",
        f"No text could be read from this scan by OCR ({reasons}). Scan it again at 300 dpi, straight and in "
        "focus, or upload the original document.",
    )


# --- layout --------------------------------------------------------------------------------------------------


def _skew(boxes: Sequence[OcrBox]) -> float:
    """The page's slope (pixels down per pixel right): the median over the engine's lines of several words."""
    by_line: dict[tuple[int, ...], list[OcrBox]] = {}
    for box in boxes:
        if box.line:
            by_line.setdefault(box.line, []).append(box)
    slopes = []
    for words in by_line.values():
        if len(words) >= SKEW_MIN_WORDS:
            xs = [(b.left + b.right) / 2 for b in words]
            ys = [b.middle for b in words]
            mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
            spread = sum((x - mean_x) ** 2 for x in xs)
            if spread:
                slopes.append(sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread)
    return sorted(slopes)[len(slopes) // 2] if slopes else 0.0


def _deskewed(boxes: Sequence[OcrBox]) -> list[OcrBox]:
    """Boxes moved up or down as if the page were straight, so that a skewed table row stays one line."""
    slope = _skew(boxes)
    if not slope:
        return list(boxes)
    moved = []
    for box in boxes:
        shift = slope * (box.left + box.right) / 2
        moved.append(
            OcrBox(box.text, box.confidence, box.left, box.top - shift, box.right, box.bottom - shift, box.line)
        )
    return moved


def _lines(boxes: Sequence[OcrBox]) -> list[list[OcrBox]]:
    """Group boxes into lines (top to bottom), each line's boxes left to right."""
    boxes = _deskewed(boxes)
    lines: list[list[OcrBox]] = []
    for box in sorted(boxes, key=lambda b: (b.middle, b.left)):
        if lines:
            last = lines[-1]
            height = max(b.height for b in last)
            middle = sum(b.middle for b in last) / len(last)
            if abs(box.middle - middle) <= SAME_LINE_OVERLAP * max(height, box.height):
                last.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda b: b.left) for line in lines]


def _cells(line: list[OcrBox]) -> list[str]:
    """The line's boxes merged where they touch; apart by several character widths, they are table cells."""
    cells = [[line[0]]]
    for previous, box in itertools.pairwise(line):
        char_width = max(previous.right - previous.left, 1) / max(len(previous.text), 1)
        if box.left - previous.right > CELL_GAP_CHARS * char_width:
            cells.append([box])
        else:
            cells[-1].append(box)
    return [" ".join(b.text for b in cell) for cell in cells]


def layout_blocks(boxes: Sequence[OcrBox], collector: BlockCollector, page: int) -> None:
    """Headings, paragraphs, lists and table rows from a page's boxes, in reading order."""
    paragraph: list[str] = []
    rows: list[str] = []
    previous_bottom: float | None = None
    lines = _lines(boxes)
    heights = sorted(_text_height(line) for line in lines)
    body = heights[len(heights) // 2] if heights else 0
    widest = max((max(b.right for b in line) - min(b.left for b in line) for line in lines), default=0.0)

    def flush_paragraph() -> None:
        if paragraph:
            text = " ".join(paragraph)
            if text[:2] in BULLETS:
                collector.add(LIST, "- " + text[2:], page)
            else:
                collector.add(PARAGRAPH, text, page)
            paragraph.clear()

    def flush_rows() -> None:
        if rows:
            collector.add(TABLE, "\n".join(rows), page)
            rows.clear()

    for line in lines:
        height = max(b.height for b in line)
        top = min(b.top for b in line)
        if previous_bottom is not None and top - previous_bottom > PARAGRAPH_GAP_LINES * height:
            flush_paragraph()
        previous_bottom = max(b.bottom for b in line)
        cells = _cells(line)
        if len(cells) > 1:
            flush_paragraph()
            rows.append(" | ".join(cells))  # a gap between rows does not end a table; a line of text does
            continue
        flush_rows()
        short = max(b.right for b in line) - min(b.left for b in line) < HEADING_MAX_WIDTH_SHARE * widest
        level = _heading_level(cells[0], _text_height(line), body) if short else 0
        if level:
            flush_paragraph()
            collector.heading(cells[0], level, page)
        else:
            paragraph.append(cells[0])
    flush_paragraph()
    flush_rows()


def _text_height(line: list[OcrBox]) -> float:
    """The line's type size: its tallest word (a line of a few words nearly always has a letter that rises and
    one that descends); only words of two letters or more count, not specks."""
    return max((b.height for b in line if sum(ch.isalpha() for ch in b.text) >= 2), default=0.0)


def _heading_level(text: str, height: float, body: float) -> int:
    """A short line set clearly larger than the page's body text is a heading (1: much larger, 2: larger)."""
    if not body or len(text) > HEADING_MAX_CHARS or len(text.split()) > HEADING_MAX_WORDS or text.endswith("."):
        return 0
    if height >= HEADING_HEIGHT_RATIO[0] * body:
        return 1
    if height >= HEADING_HEIGHT_RATIO[1] * body:
        return 2
    return 0
