"""Page images for OCR tests and benchmarks, made in code: text and tables drawn with PIL in DejaVu (Debian's
fonts-dejavu-core, which Pillow finds by path), PDF pages rendered with pypdfium2, light scanner noise and skew,
and PDFs made of page images (what a scanner writes: no text layer)."""

from __future__ import annotations

import io
import random
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pypdfium2
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ingest.parsers import HEADING, LIST, TABLE, ParsedDocument

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT = FONT_DIR / "DejaVuSans.ttf"
FONT_BOLD = FONT_DIR / "DejaVuSans-Bold.ttf"
A4_INCHES = (8.27, 11.69)
MARGIN_INCHES = 0.9
BODY_POINTS = 11
LINE_SPACING = 1.45


@dataclass(frozen=True)
class Line:
    text: str
    bold: bool = False
    points: float = BODY_POINTS
    cells: tuple[str, ...] = ()  # a table row: cells drawn in columns, ruled


@dataclass(frozen=True)
class ScanPage:
    image: Image.Image
    text: str  # what is drawn, in reading order, one line per line


def _font(points: float, dpi: int, *, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_BOLD if bold else FONT), round(points * dpi / 72))


def render_pages(lines: Sequence[Line], *, dpi: int = 200) -> list[ScanPage]:
    """Lay `lines` out on A4 pages at `dpi`, wrapping long paragraphs; table rows are drawn as ruled cells."""
    width, height = (round(side * dpi) for side in A4_INCHES)
    margin = round(MARGIN_INCHES * dpi)
    chars_per_line = int((width - 2 * margin) / (BODY_POINTS * dpi / 72 * 0.55))
    pages: list[ScanPage] = []
    image, draw, y, drawn = _new_page(width, height), None, margin, []
    draw = ImageDraw.Draw(image)

    def finish() -> None:
        pages.append(ScanPage(image, "\n".join(drawn)))

    for line in lines:
        wrapped = [line.text] if line.cells else textwrap.wrap(line.text, chars_per_line) or [""]
        for piece in wrapped:
            step = round(line.points * dpi / 72 * LINE_SPACING)
            if y + step > height - margin:
                finish()
                image, y, drawn = _new_page(width, height), margin, []
                draw = ImageDraw.Draw(image)
            font = _font(line.points, dpi, bold=line.bold)
            if line.cells:
                column = (width - 2 * margin) // len(line.cells)
                for index, cell in enumerate(line.cells):
                    x = margin + index * column
                    draw.rectangle(
                        [x, y - step // 6, x + column, y + step - step // 6], outline=0, width=max(1, dpi // 150)
                    )
                    draw.text((x + step // 4, y), cell, fill=0, font=font)
                drawn.append(" ".join(line.cells))
            else:
                draw.text((margin, y), piece, fill=0, font=font)
                if piece:
                    drawn.append(piece)
            y += step
    finish()
    return pages


def _new_page(width: int, height: int) -> Image.Image:
    return Image.new("L", (width, height), 255)


def degrade(image: Image.Image, *, seed: int = 7, skew_degrees: float = 1.2, noise: float = 0.04) -> Image.Image:
    """A light office scan: slightly rotated, softened, with speckles of dust and toner on a faintly grey page."""
    rng = random.Random(seed)
    page = image.convert("L").rotate(skew_degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=255)
    page = page.filter(ImageFilter.GaussianBlur(radius=0.6))
    pixels = page.load()
    width, height = page.size
    for _ in range(int(width * height * noise / 10)):
        x, y = rng.randrange(width), rng.randrange(height)
        pixels[x, y] = rng.choice((0, 90, 170, 255))
    return page.point(lambda value: int(value * 0.93 + 8))


def noise_image(width: int = 1200, height: int = 1600, *, seed: int = 3) -> Image.Image:
    """Random grey speckle with no text at all."""
    rng = random.Random(seed)
    return Image.frombytes("L", (width, height), bytes(rng.randrange(256) for _ in range(width * height)))


def image_bytes(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def pdf_from_images(images: Sequence[Image.Image], *, dpi: int = 200) -> bytes:
    """A PDF whose pages are only these images, as a scanner or 'print to PDF' of a scan writes it."""
    out = io.BytesIO()
    first, *rest = [image.convert("RGB") for image in images]
    first.save(out, "PDF", resolution=dpi, save_all=True, append_images=rest)
    return out.getvalue()


def render_pdf(data: bytes, *, dpi: int) -> list[tuple[Image.Image, str]]:
    """Each page of a born-digital PDF as an image at `dpi`, with its text layer (the reference text)."""
    pdf = pypdfium2.PdfDocument(data)
    pages = []
    try:
        for page in pdf:
            bitmap = page.render(scale=dpi / 72, grayscale=True)
            text = page.get_textpage().get_text_range()
            pages.append((bitmap.to_pil().convert("L"), text))
    finally:
        pdf.close()
    return pages


def printed_lines(parsed: ParsedDocument) -> list[Line]:
    """A parsed document as it prints: headings larger and bold by level, tables as ruled cells, list items with
    a bullet, a blank line between blocks."""
    lines: list[Line] = []
    for block in parsed.blocks:
        if block.kind == HEADING:
            lines += [Line(""), Line(block.text, bold=True, points=16 if block.level == 1 else 13)]
        elif block.kind == TABLE:
            lines += [Line("", cells=tuple(row.split(" | "))) for row in block.text.split("\n")]
        elif block.kind == LIST:
            lines += [Line("• " + item.strip().removeprefix("- ")) for item in block.text.split("\n")]
        else:
            lines.append(Line(block.text))
        lines.append(Line(""))
    return lines


def handbook_page_lines() -> list[Line]:
    """One handbook page with a paragraph and a table of values: what the browser test asks about."""
    return [
        Line("Employee Handbook: Allowances", bold=True, points=16),
        Line(""),
        Line(
            "This page lists the daily meal allowances that employees may claim when they travel for work. "
            "Claims above the allowance need a receipt and the approval of a line manager."
        ),
        Line(""),
        Line("Meal allowances per day", bold=True, points=13),
        Line("", cells=("City", "Allowance", "Hotel cap")),
        Line("", cells=("Lisbon", "38 EUR", "140 EUR")),
        Line("", cells=("Warsaw", "31 EUR", "110 EUR")),
        Line("", cells=("Oslo", "67 EUR", "210 EUR")),
        Line(""),
        Line("Unused allowances cannot be carried over to another trip."),
    ]
