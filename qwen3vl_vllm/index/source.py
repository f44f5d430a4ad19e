"""What an index job reads: a table (JSONL, CSV, Parquet) or a folder, as ``(row, id, item)``.

Every source is read as a stream, in the same order each time, so a job can be planned in
chunks of rows and resumed by chunk number. Items come out in the upstream input format
(``text``, ``image``, ``video``, ``instruction``, ``fps``, ``max_frames``) and self-contained:
relative media paths are made absolute against the table's folder (as dataset manifests such
as ``metadata.jsonl`` mean them), and media bytes (Parquet ``binary`` columns) become ``data:``
URLs, so an item can be written, hashed and sent to another process or machine as JSON.

A row that cannot be read (bad JSON, no id, a value of the wrong type) is not dropped: it
comes out as a ``RowError`` in its place, and the job records it in the errors table.

Folders are walked recursively in sorted order. A file is an image or a video by its content
(magic bytes, not its name), a ``.txt`` file is a text item unless it is the caption of an
image or video with the same stem (``cat.jpg`` + ``cat.txt``: one item with both); anything
else is a ``RowError`` naming it. Hidden files and folders (``.name``) are skipped and
counted. The id is the path relative to the folder, with ``/`` separators.

Example::

    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "t.jsonl").write_text(json.dumps({"id": "a", "text": "hi"}) + "\\n")
    26
    >>> [(r.row, r.id, r.item) for r in open_source(d / "t.jsonl").rows()]
    [(0, 'a', {'text': 'hi'})]
"""

from __future__ import annotations

import base64
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from qwen3vl_vllm.errors import JobError

ITEM_KEYS = ("text", "image", "video", "instruction", "fps", "max_frames")
MEDIA_COLUMNS = ("image", "video")
ID_COLUMN = "id"
CAPTION_SUFFIX = ".txt"
SNIFF_BYTES = 400  # enough for every signature below (MPEG-TS: three 188-byte packets)
TABLE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Row:
    row: int  # place in the source, from 0
    id: str
    item: dict


@dataclass(frozen=True)
class RowError:
    row: int
    id: str | None
    item: Any  # what was read, for the errors table (a text for unreadable lines)
    message: str
    kind: str = "SourceError"  # the errors table's error_type


@dataclass
class Source:
    """A readable source: ``rows()`` streams it; ``describe()`` is what the manifest records."""

    path: Path
    kind: str  # jsonl | csv | parquet | folder
    id_column: str = ID_COLUMN
    skipped: list[str] = field(default_factory=list)  # hidden entries of a folder, by name

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "id_column": self.id_column}

    def rows(self) -> Iterator[Row | RowError]:
        reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows,
                  "folder": _folder_rows}[self.kind]
        yield from reader(self)


def open_source(path: str | os.PathLike, *, id_column: str = ID_COLUMN) -> Source:
    """The source at ``path``: a folder, or a table by its suffix (.jsonl/.ndjson, .csv,
    .parquet). Raises ``JobError`` naming the path when it is neither."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        return Source(p, "folder", id_column="path")
    if not p.exists():
        raise JobError(f"source {str(path)!r} does not exist", "Give a folder or a .jsonl, .csv or .parquet file")
    kind = TABLE_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise JobError(f"source {str(path)!r} is not a table this job reads (suffix {p.suffix!r})",
                       "Give a folder or a .jsonl, .csv or .parquet file")
    return Source(p, kind, id_column=id_column)


# ---- turning a table row into an item ---------------------------------------------------------

def sniff(head: bytes) -> tuple[str, str] | None:
    """``(kind, mime)`` of a file's first bytes: ("image"|"video", mime), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", "video/x-msvideo"
    if head.startswith(b"BM") and len(head) > 14:
        return "image", "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image", "image/tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
            return "image", f"image/{'avif' if brand == b'avif' else 'heic'}"
        return "video", "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "video/webm" if b"webm" in head else "video/x-matroska"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "video", "video/mpeg"
    if head.startswith(b"FLV"):
        return "video", "video/x-flv"
    if head.startswith(b"OggS"):
        return "video", "video/ogg"
    if len(head) >= 377 and head[0] == head[188] == head[376] == 0x47:  # three TS packets
        return "video", "video/mp2t"
    return None


def _sniff_file(path: Path) -> tuple[str, str] | None:
    with open(path, "rb") as f:
        return sniff(f.read(SNIFF_BYTES))


def data_url(data: bytes, where: str) -> str:
    """Media bytes as a ``data:`` URL (the mime sniffed from the bytes)."""
    found = sniff(data[:SNIFF_BYTES])
    mime = found[1] if found else "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _media_value(value: Any, base: Path, where: str) -> Any:
    """A media value with relative paths made absolute and bytes made ``data:`` URLs."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return data_url(bytes(value), where)
    if isinstance(value, str):
        if value.startswith(("http://", "https://", "data:", "file://")) or os.path.isabs(value):
            return value
        if value.strip() == "":
            return value  # refused by the item's own check, naming it
        return str((base / value).resolve())
    if isinstance(value, (list, tuple)):
        return [_media_value(v, base, f"{where}[{k}]") for k, v in enumerate(value)]
    return value


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and value != value  # NaN from a table's empty cell


def item_from_record(record: dict, *, row: int, base: Path, id_column: str,
                     empty_is_missing: bool = False) -> Row | RowError:
    """A table record -> ``Row`` (id and upstream item) or ``RowError`` naming the problem.

    Columns other than the id and the upstream keys are refused by name (a typo like ``imge``
    would otherwise embed the row without its image). ``empty_is_missing``: CSV has no null,
    so an empty cell there means "not given"."""
    where = f"row {row}"
    rid = record.get(id_column)
    if _is_missing(rid) or (isinstance(rid, str) and not rid.strip()):
        return RowError(row, None, record, f"{where}: no {id_column!r} value. Give every row a unique id")
    if isinstance(rid, float) and rid.is_integer():
        rid = int(rid)
    rid = str(rid)
    unknown = sorted(k for k in record if k != id_column and k not in ITEM_KEYS)
    if unknown:
        return RowError(row, rid, record, f"{where} (id {rid!r}): unknown column(s) {unknown}. "
                        f"Item columns are {list(ITEM_KEYS)}; rename or drop the others")
    item: dict = {}
    for key in ITEM_KEYS:
        if key not in record:
            continue
        value = record[key]
        if _is_missing(value) or (empty_is_missing and value == ""):
            continue
        if key in MEDIA_COLUMNS:
            value = _media_value(value, base, f"{where}.{key}")
        elif key in ("fps", "max_frames") and isinstance(value, str):
            try:
                value = float(value) if key == "fps" else int(value)
            except ValueError:
                return RowError(row, rid, record, f"{where} (id {rid!r}).{key}: {value!r} is not a number")
        elif key == "max_frames" and isinstance(value, float) and value.is_integer():
            value = int(value)
        item[key] = value
    return Row(row, rid, item)


# ---- readers ----------------------------------------------------------------------------------

def _jsonl_rows(src: Source) -> Iterator[Row | RowError]:
    base = src.path.parent
    with open(src.path, "rb") as f:
        row = 0
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines are not rows (a trailing newline is common)
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                yield RowError(row, None, raw[:200].decode("utf-8", "replace"),
                               f"row {row} (line {line_no}): not valid JSON ({e}). Fix the line")
            else:
                if isinstance(record, dict):
                    yield item_from_record(record, row=row, base=base, id_column=src.id_column)
                else:
                    yield RowError(row, None, record, f"row {row} (line {line_no}): a JSON "
                                   f"{type(record).__name__}, not an object. Write one object per line")
            row += 1


def _csv_rows(src: Source) -> Iterator[Row | RowError]:
    base = src.path.parent
    with open(src.path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or src.id_column not in reader.fieldnames:
            raise JobError(f"{src.path}: no {src.id_column!r} column (columns: {reader.fieldnames})",
                           "Add an id column, or name it with --id-column")
        for row, record in enumerate(reader):
            if None in record:  # more cells than the header
                yield RowError(row, record.get(src.id_column), {k: v for k, v in record.items() if k},
                               f"row {row}: more cells than the header has columns. Quote cells with commas")
                continue
            yield item_from_record(record, row=row, base=base, id_column=src.id_column,
                                   empty_is_missing=True)


def _parquet_rows(src: Source) -> Iterator[Row | RowError]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise JobError("reading Parquet needs pyarrow", "pip install 'qwen3vl-vllm[index]'") from None
    base = src.path.parent
    pf = pq.ParquetFile(src.path)
    if src.id_column not in pf.schema_arrow.names:
        raise JobError(f"{src.path}: no {src.id_column!r} column (columns: {pf.schema_arrow.names})",
                       "Add an id column, or name it with --id-column")
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield item_from_record(record, row=row, base=base, id_column=src.id_column)
            row += 1


def _walk(top: Path, skipped: list[str]) -> list[Path]:
    """Files under ``top`` sorted by relative path (the id), hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        hidden = sorted(d for d in dirnames if d.startswith("."))
        skipped.extend(Path(dirpath, d).relative_to(top).as_posix() + "/" for d in hidden)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                skipped.append(Path(dirpath, name).relative_to(top).as_posix())
            else:
                found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(top).as_posix())


def _text_file(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _folder_rows(src: Source) -> Iterator[Row | RowError]:
    """Sorted walk; captions pair with the media file of the same stem in the same folder."""
    src.skipped.clear()
    files = _walk(src.path, src.skipped)
    kinds: dict[Path, tuple[str, str] | None] = {}
    for p in files:
        if p.suffix.lower() != CAPTION_SUFFIX:
            try:
                kinds[p] = _sniff_file(p)
            except OSError:
                kinds[p] = None
    media_stems = {p.with_suffix("") for p, k in kinds.items() if k is not None}
    row = 0
    for p in files:
        rid = p.relative_to(src.path).as_posix()
        if p.suffix.lower() == CAPTION_SUFFIX:
            if p.with_suffix("") in media_stems:
                continue  # a caption: read with its media file
            try:
                text = _text_file(p)
            except OSError as e:
                yield RowError(row, rid, {"path": rid}, f"{rid}: cannot read ({e.strerror or e})")
            else:
                if text is None:
                    yield RowError(row, rid, {"path": rid}, f"{rid}: a .txt file that is not UTF-8 text")
                else:
                    yield Row(row, rid, {"text": text})
            row += 1
            continue
        kind = kinds.get(p)
        if kind is None:
            yield RowError(row, rid, {"path": rid}, f"{rid}: not an image or video this job "
                           "recognises by content (JPEG, PNG, GIF, WebP, BMP, TIFF, MP4/MOV, "
                           "WebM/MKV, AVI, MPEG), nor a .txt text. Move it out of the folder "
                           "or convert it")
            row += 1
            continue
        item: dict = {kind[0]: str(p)}
        cap = media_caption = p.with_suffix(CAPTION_SUFFIX)
        if media_caption.is_file():
            text = _text_file(cap)
            if text is None:
                yield RowError(row, rid, item, f"{rid}: its caption {cap.name!r} is not UTF-8 "
                               "text. Save the caption as UTF-8")
                row += 1
                continue
            item["text"] = text.strip()
        yield Row(row, rid, item)
        row += 1
