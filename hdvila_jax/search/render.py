"""A PNG of search results: per query a title row, then one cell per hit (thumbnail, rank,
id or video file name, score, time range and caption)."""
from __future__ import annotations

import io
import os
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from hdvila_jax import storage
from hdvila_jax.search.index import Index
from hdvila_jax.search.query import Hit

MARGIN = 12
GAP = 10
THUMB_W, THUMB_H = 160, 96
CELL_W = THUMB_W + 20
LINE_H = 16
TEXT_LINES = 4  # "#rank  id", "score", two lines of caption
CELL_H = THUMB_H + 6 + TEXT_LINES * LINE_H + 8
TITLE_H = 30
BACKGROUND, INK, MUTED, THUMB_BG = (255, 255, 255), (20, 20, 20), (90, 90, 90), (230, 230, 230)


def canvas_size(num_queries: int, columns: int) -> tuple[int, int]:
    """(width, height) of the picture of ``num_queries`` queries with ``columns`` hits each."""
    width = 2 * MARGIN + columns * CELL_W + (columns - 1) * GAP
    return width, 2 * MARGIN + num_queries * (TITLE_H + CELL_H)


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int, lines: int) -> list[str]:
    """Greedy word wrap into at most ``lines`` lines; the last one is cut to fit."""
    out, words = [], text.split()
    while words and len(out) < lines - 1:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        out.append(_fit(line, font, width))
    if words:
        out.append(_fit(" ".join(words), font, width))
    return out


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, hit: Hit, thumbnail: bytes,
               font: ImageFont.FreeTypeFont) -> None:
    left = x + (CELL_W - THUMB_W) // 2
    draw.rectangle((left, y, left + THUMB_W - 1, y + THUMB_H - 1), fill=THUMB_BG)
    image = Image.open(io.BytesIO(thumbnail)).convert("RGB")
    image.thumbnail((THUMB_W, THUMB_H))
    canvas.paste(image, (left + (THUMB_W - image.width) // 2, y + (THUMB_H - image.height) // 2))
    text_y = y + THUMB_H + 6
    name = os.path.basename(hit.path) if hit.start is not None else hit.id
    lines = [(f"#{hit.rank}  {name}", INK), (f"score {hit.score:.3f}  {hit.time_range}".rstrip(), MUTED)]
    lines += [(line, INK) for line in _wrap(hit.caption, font, CELL_W - 4, TEXT_LINES - 2)]
    for i, (line, colour) in enumerate(lines):
        draw.text((x + 2, text_y + i * LINE_H), _fit(line, font, CELL_W - 4), fill=colour, font=font)


def render_results(path: str, queries: Sequence[str], results: Sequence[Sequence[Hit]],
                   index: Index) -> tuple[int, int]:
    """Draw ``results[i]`` (the hits of ``queries[i]``) with ``index``'s thumbnails into the PNG ``path``
    (local or gs://); return its (width, height)."""
    if len(queries) != len(results) or not queries:
        raise ValueError(f"render_results needs one hit list per query, got {len(queries)} queries "
                         f"and {len(results)} hit lists")
    columns = max(1, max(len(hits) for hits in results))
    size = canvas_size(len(queries), columns)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, title_font = ImageFont.load_default(size=13), ImageFont.load_default(size=17)
    for q, (query, hits) in enumerate(zip(queries, results)):
        top = MARGIN + q * (TITLE_H + CELL_H)
        draw.text((MARGIN, top + 4), _fit(f'query: "{query}"', title_font, size[0] - 2 * MARGIN), fill=INK,
                  font=title_font)
        for c, hit in enumerate(hits):
            _draw_cell(canvas, draw, MARGIN + c * (CELL_W + GAP), top + TITLE_H, hit, index.thumbnail(hit.row), font)
    png = io.BytesIO()
    canvas.save(png, format="PNG")
    storage.write_bytes(path, png.getvalue())
    return size
