import numpy as np
import pytest

from qwen3vl_vllm.prompts import inputs as I
from qwen3vl_vllm.errors import InputError


@pytest.mark.parametrize("given,expected", [
    (None, "Represent the user's input."),
    ("", "Represent the user's input."),
    ("   ", "Represent the user's input."),
    ("Find cats", "Find cats."),
    ("  Find cats  ", "Find cats."),
    ("Find cats?", "Find cats?"),
    ("Find cats!", "Find cats!"),
    ("找猫。", "找猫。"),          # CJK full stop is Unicode punctuation (Po)
    ("quote «x»", "quote «x»"),    # Pf
    ("ends with digit 3", "ends with digit 3."),
    ("ends with symbol $", "ends with symbol $."),  # Sc is not punctuation
])
def test_instruction_rule(given, expected):
    assert I.format_instruction(given) == expected


def test_part_order_videos_images_texts():
    conv = I.embedding_conversation({"text": "t", "image": "a.png", "video": "v.mp4"})
    types = [p["type"] for p in conv[1]["content"]]
    assert types == ["video", "image", "text"]
    assert conv[0] == {"role": "system", "content": [{"type": "text", "text": "Represent the user's input."}]}


def test_null_only_when_nothing_given():
    for empty in ({}, {"text": None}, {"text": []}, {"image": []}):
        assert I.embedding_conversation(empty)[1]["content"] == [{"type": "text", "text": "NULL"}]
    assert I.embedding_conversation({"text": ""})[1]["content"] == [{"type": "text", "text": ""}]


def test_pixel_and_frame_settings():
    conv = I.embedding_conversation({"image": "a.png", "video": "v.mp4", "fps": 2.0, "max_frames": 8})
    video, image = conv[1]["content"]
    assert video == {"type": "video", "video": "v.mp4", "fps": 2.0, "max_frames": 8}
    assert image["min_pixels"] == 4096 and image["max_pixels"] == 1843200
    frames = I.embedding_conversation({"video": [f"f{i}.png" for i in range(5)], "max_frames": 8})
    part = frames[1]["content"][0]
    assert part["total_pixels"] == 7864320 and "fps" not in part
    # a short list is used as given (never stretched); the item's max_frames does not apply
    assert part["video"] == [f"f{i}.png" for i in range(5)]
    many = I.embedding_conversation({"video": [f"f{i}.png" for i in range(100)]})
    assert len(many[1]["content"][0]["video"]) == 64  # a longer list is reduced to 64


@pytest.mark.parametrize("n", [1, 2, 3, 10, 63, 64])
def test_short_frame_lists_are_never_stretched(n):
    """Upstream ``sample_frames``: ``if n <= max_segments: return frames``. A stretched list
    (linspace with repeats up to 64) fails here."""
    frames = [f"f{i}.png" for i in range(n)]
    assert I.sample_frame_list(frames, 64) == frames


@pytest.mark.parametrize("n", [1, 2, 5, 63, 64, 65, 200])
@pytest.mark.parametrize("m", [2, 7, 64])
def test_frame_sampling_matches_numpy_linspace(n, m):
    frames = list(range(n))
    expected = frames if n <= m else [frames[i] for i in np.linspace(0, n - 1, m).astype(int)]
    assert I.sample_frame_list(frames, m) == expected


def test_split_videos():
    assert I.split_videos("a.mp4") == ["a.mp4"]
    assert I.split_videos(["a.mp4", "b.webm"]) == ["a.mp4", "b.webm"]
    assert I.split_videos(["f1.png", "f2.png"]) == [["f1.png", "f2.png"]]
    assert I.split_videos([["f1.png"], ["f2.png"]]) == [["f1.png"], ["f2.png"]]


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(InputError) as err:
        I.embedding_conversation({"txt": "typo"}, index=4)
    assert "inputs[4]" in str(err.value) and "'txt'" in str(err.value)


def test_wrong_types_are_named():
    with pytest.raises(InputError, match=r"inputs\[0\].text\[0\]"):
        I.embedding_conversation({"text": 3}, index=0)
    with pytest.raises(InputError, match=r"inputs\[2\].max_frames"):
        I.embedding_conversation({"text": "x", "max_frames": 1}, index=2)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(InputError, match=r"inputs\[1\].fps"):
            I.embedding_conversation({"video": "a.mp4", "fps": bad}, index=1)


def test_zero_fps_and_max_frames_mean_the_default():
    """Upstream: ``fps or self.fps``, ``max_frames or self.max_frames``."""
    conv = I.embedding_conversation({"video": "a.mp4", "fps": 0, "max_frames": 0})
    part = conv[1]["content"][0]
    assert part["fps"] == I.DEFAULT_SETTINGS.fps and part["max_frames"] == I.DEFAULT_SETTINGS.max_frames


@pytest.mark.parametrize("video,expected", [
    ("clip.mp4", ["clip.mp4"]),
    (["clip.ts"], ["clip.ts"]),                                  # a list of one video file
    (["a.3gp", "b.mp4"], ["a.3gp", "b.mp4"]),
    (["https://x.test/v1", "https://x.test/v2"], ["https://x.test/v1", "https://x.test/v2"]),
    (["f1.png", "f2.jpg"], [["f1.png", "f2.jpg"]]),              # frames: first is an image path
    (["https://x.test/f.png?s=1", "f2.png"], [["https://x.test/f.png?s=1", "f2.png"]]),
    ([["f1.png", "f2.png"], "clip.mp4"], [["f1.png", "f2.png"], "clip.mp4"]),  # a mix
])
def test_videos_split_by_upstream_rule(video, expected):
    """Upstream ``is_video_input``: a list is one video of frames only when its first element
    is a frame (an image path or image)."""
    assert I.split_videos(video) == expected


def test_rerank_request_rules():
    req = I.rerank_request({"query": {"text": "q"}, "documents": [{"text": "d"}, {}]})
    assert req.instruction == I.DEFAULT_RERANK_INSTRUCTION
    assert req.documents[1] == [{"type": "text", "text": "NULL"}]
    with pytest.raises(InputError, match="documents"):
        I.rerank_request({"query": {"text": "q"}, "documents": []})
    with pytest.raises(InputError, match="query"):
        I.rerank_request({"query": {}, "documents": [{"text": "d"}]})
    conv = I.rerank_conversation("Inst", [{"type": "text", "text": "q"}], [{"type": "text", "text": "d"}])
    texts = "".join(p["text"] for p in conv[1]["content"])
    assert texts == "<Instruct>: Inst<Query>:q\n<Document>:d"


@pytest.mark.parametrize("text,where,char", [
    ("ok \ud83d", "inputs[0].text[0]", "U+D83D at character 3"),     # a JS slice through an emoji
    ("\ude00 tail", "inputs[0].text[0]", "U+DE00 at character 0"),
])
def test_lone_surrogates_are_named(text, where, char):
    """Half of a UTF-16 pair is not Unicode text; the reference's tokenizer refuses it with a
    TypeError naming nothing. Here it is an InputError naming the text and the fix."""
    with pytest.raises(InputError) as err:
        I.embedding_conversation({"text": text}, index=0)
    assert str(err.value).startswith(f"{where}: text is not valid Unicode: a lone surrogate {char}. ")
    assert "text.encode('utf-8', 'replace').decode()" in str(err.value)
    with pytest.raises(InputError, match=r"^documents\[1\]\.text\[0\]: text is not valid Unicode"):
        I.rerank_request({"query": {"text": "q"}, "documents": [{"text": "fine"}, {"text": text}]})
    with pytest.raises(InputError, match=r"^inputs\[2\]\.instruction: text is not valid Unicode"):
        I.embedding_conversation({"text": "fine", "instruction": text}, index=2)
    # a whole pair (an emoji) is fine, as is every other character
    assert I.embedding_conversation({"text": "ok \U0001F600 \u00e9\u4e2d\ufffd"}, index=0)
