"""The index job's sources: tables (JSONL, CSV, Parquet) and folders, read as rows in a stable
order, with bad rows kept as errors in their place (no engine: pure reading)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from qwen3vl_vllm.errors import JobError
from qwen3vl_vllm.index.source import Row, RowError, open_source, sniff

from index_corpus import folder_corpus, table_corpus


def _rows(path, **kw):
    return list(open_source(path, **kw).rows())


def test_jsonl_rows_in_order_with_errors_in_place(tmp_path):
    c = table_corpus(tmp_path)
    rows = _rows(c["path"])
    assert len(rows) == c["n_rows"] == 45
    assert [r.row for r in rows] == list(range(45))
    by_id = {r.id: r for r in rows if isinstance(r, Row)}
    # relative media paths are resolved against the table's folder
    assert by_id["img-photo0"].item == {"image": str(tmp_path / "media" / "photo0.jpg")}
    assert by_id["video-frames"].item["video"] == [str(tmp_path / "media" / f"frame{i}.png") for i in range(4)]
    assert by_id["video-file"].item == {"video": str(tmp_path / "media" / "clip.mp4"), "fps": 2.0, "max_frames": 4}
    assert by_id["42"].item == {"text": "a numeric id"}  # ids are strings
    errors = [r for r in rows if isinstance(r, RowError)]
    assert [e.row for e in errors] == [43, 44]
    assert "unknown column(s) ['imge']" in errors[0].message and errors[0].id == "typo-column"
    assert errors[1].message.startswith("row 44 (line 45): not valid JSON")


def test_blank_lines_are_not_rows_and_non_objects_are_errors(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"id": "a", "text": "x"}\n\n  \n[1, 2]\n{"text": "no id"}\n{"id": "", "text": "empty id"}\n')
    rows = _rows(p)
    assert [type(r).__name__ for r in rows] == ["Row", "RowError", "RowError", "RowError"]
    assert "a JSON list, not an object" in rows[1].message
    assert "no 'id' value" in rows[2].message and "no 'id' value" in rows[3].message


def _as_csv(rows: list[dict], path: Path) -> None:
    keys = ["id", "text", "image", "instruction", "fps", "max_frames"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})


def test_csv_and_parquet_give_the_jsonl_items(tmp_path):
    import pyarrow as pa  # installed by ./launch.sh setup (the [index] extra)
    import pyarrow.parquet as pq

    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    rows = [{"id": "t", "text": "hello, world", "instruction": "Find it"},
            {"id": "i", "image": "a.png"},
            {"id": "both", "image": "a.png", "text": "with text"}]
    with open(tmp_path / "t.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    _as_csv(rows, tmp_path / "t.csv")
    schema = pa.schema([(k, pa.string()) for k in ("id", "text", "image", "instruction")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "t.parquet")
    want = [(r.id, r.item) for r in _rows(tmp_path / "t.jsonl")]
    assert [(r.id, r.item) for r in _rows(tmp_path / "t.csv")] == want
    assert [(r.id, r.item) for r in _rows(tmp_path / "t.parquet")] == want  # nulls are "not given"


def test_parquet_bytes_become_data_urls_of_the_same_bytes(tmp_path):
    import pyarrow as pa  # installed by ./launch.sh setup (the [index] extra)
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(buf, "JPEG")
    data = buf.getvalue()
    pq.write_table(pa.table({"id": ["x"], "image": [data]}), tmp_path / "b.parquet")
    (row,) = _rows(tmp_path / "b.parquet")
    url = row.item["image"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == data


def test_csv_without_id_column_and_unknown_suffix_are_refused(tmp_path):
    (tmp_path / "n.csv").write_text("text\nhello\n")
    with pytest.raises(JobError, match="no 'id' column"):
        _rows(tmp_path / "n.csv")
    (tmp_path / "x.tsv").write_text("")
    with pytest.raises(JobError, match="suffix '.tsv'"):
        open_source(tmp_path / "x.tsv")
    with pytest.raises(JobError, match="does not exist"):
        open_source(tmp_path / "nothing.jsonl")
    # another id column, by name
    (tmp_path / "k.csv").write_text("key,text\nk1,hello\n")
    assert [(r.id, r.item) for r in _rows(tmp_path / "k.csv", id_column="key")] == [("k1", {"text": "hello"})]


def test_folder_walk_sorted_captions_content_and_hidden(tmp_path):
    c = folder_corpus(tmp_path)
    src = open_source(tmp_path)
    rows = list(src.rows())
    ids = [r.id for r in rows]
    assert ids == sorted(ids)  # byte order of relative paths, folders walked recursively
    assert "photos/photo0.txt" not in ids and "clips/walk.txt" not in ids  # captions, not items
    by_id = {r.id: r for r in rows}
    for rid, caption in c["captioned"].items():
        assert by_id[rid].item["text"] == caption
    assert by_id["clips/walk.mp4"].item["video"] == str(tmp_path / "clips" / "walk.mp4")
    assert by_id[c["renamed"]].item == {"image": str(tmp_path / c["renamed"])}  # by content
    assert by_id["notes/note0.txt"].item["text"].endswith(".")
    assert isinstance(by_id[c["unrecognised"]], RowError)
    assert "not an image or video" in by_id[c["unrecognised"]].message
    # a JPEG header with nothing behind it is an image here; decoding it fails later, named
    assert by_id[c["broken"]].item == {"image": str(tmp_path / c["broken"])}
    assert sorted(src.skipped) == sorted(c["hidden"])
    assert not any(i.startswith(".") for i in ids)


def _real_files():
    """Image and video files that ship inside installed packages (real encoders' output)."""
    import importlib.util

    found = []
    for pkg in ("skimage", "PIL", "matplotlib", "av", "imageio"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for p in Path(root).rglob("*"):
                if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".mp4"):
                    found.append(p)
    return sorted(found)[:400]


def test_sniff_agrees_with_pil_on_real_files_from_packages():
    files = _real_files()
    assert len(files) >= 20, f"expected real images in installed packages, found {len(files)}"
    checked = 0
    for p in files:
        head = p.read_bytes()[:64]
        got = sniff(head)
        try:
            with Image.open(p) as im:
                fmt = im.format
        except Exception:  # noqa: BLE001 - not an image PIL reads: sniff may say anything but image/PIL's
            continue
        assert got is not None and got[0] == "image", f"{p}: PIL reads {fmt}, sniff says {got}"
        checked += 1
    assert checked >= 20


def test_sniff_kinds(tmp_path):
    from cases import resolution_change_ts, write_mp4

    ts = resolution_change_ts(tmp_path / "clip.ts")  # a real MPEG-TS from PyAV's muxer
    assert sniff(ts.read_bytes()[:400]) == ("video", "video/mp2t")
    assert sniff(write_mp4(tmp_path / "clip.mp4").read_bytes()[:400])[0] == "video"
    assert sniff(b"\x00\x00\x00\x18ftypmp42") == ("video", "video/mp4")
    assert sniff(b"\x00\x00\x00\x18ftypheic") == ("image", "image/heic")
    assert sniff(b"\x1a\x45\xdf\xa3\x01\x00\x00\x00webm") == ("video", "video/webm")
    assert sniff(b"RIFF\x00\x00\x00\x00AVI LIST") == ("video", "video/x-msvideo")
    assert sniff(b"hello world") is None
