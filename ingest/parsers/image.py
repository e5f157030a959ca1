"""Uploaded images (PNG, JPEG, TIFF; a multi-page TIFF is a document of pages): read by OCR, one page per frame."""

from __future__ import annotations

from PIL import Image, ImageSequence

from ingest.parsers.common import BlockCollector, ParsedDocument, ParseError, finish_document
from ingest.parsers.ocr import (
    OcrLimits,
    OcrPage,
    OcrReport,
    open_image,
    progress,
    read_page,
    too_large_problem,
    unreadable_error,
    with_ocr,
)

# A TIFF can hold any number of frames; a scanned document of more pages than this is better sent as a PDF.
MAX_IMAGE_PAGES = 200


def parse_image(data: bytes, media_type: str) -> ParsedDocument:
    limits = OcrLimits.from_settings()
    image = open_image(data)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ParseError("image_too_large", f"This image cannot be read: {too_large_problem(width, height, limits)}.")
    try:
        frames = getattr(image, "n_frames", 1)
    except (OSError, ValueError, TypeError, SyntaxError, EOFError) as exc:  # a damaged later frame of a TIFF
        raise open_image_failed() from exc
    if frames > MAX_IMAGE_PAGES:
        raise ParseError(
            "too_many_pages",
            f"The image has {frames} pages, above the {MAX_IMAGE_PAGES}-page limit; save the scan as a PDF or "
            "split it.",
        )
    collector = BlockCollector()
    pages: list[OcrPage] = []
    with progress(frames) as step:
        try:
            for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
                step(number - 1)
                # Each frame of a TIFF has its own size: check it before decoding (a small first page can hide a
                # huge second one).
                frame_width, frame_height = frame.size
                if frame_width * frame_height > limits.max_pixels:
                    raise ParseError(
                        "image_too_large",
                        f"Page {number} of this image cannot be read: "
                        f"{too_large_problem(frame_width, frame_height, limits)}.",
                    )
                frame.load()
                pages.append(read_page(frame, number, collector, limits))
        except Image.DecompressionBombError as exc:
            raise ParseError(
                "image_too_large", f"This image cannot be read: a page is far larger than OCR allows ({exc})."
            ) from exc
        except (OSError, ValueError, TypeError, SyntaxError, EOFError) as exc:
            raise open_image_failed() from exc
    report = OcrReport(pages=tuple(pages))
    if not report.read_pages:
        raise unreadable_error(report)
    document = finish_document(
        collector, media_type, title=collector.first_h1, page_count=frames if frames > 1 else None
    )
    return with_ocr(document, report)


def open_image_failed() -> ParseError:
    return ParseError(
        "corrupt_image",
        "The image is damaged (its data ends early or is garbled); save it again as PNG, JPEG or TIFF and upload it.",
    )
