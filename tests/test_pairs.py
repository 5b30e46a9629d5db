"""Reading the pairs file: both schemas, and clear errors naming file and line."""

import json

import pytest

from sadi_cpp import BadInputError
from sadi_cpp.data.pairs import read_pairs


def write(tmp_path, text):
    p = tmp_path / "pairs.jsonl"
    p.write_text(text, encoding="utf-8")
    return p


def test_both_schemas(tmp_path):
    p = write(tmp_path, '{"prompt": "Q: ", "positive": "yes", "negative": "no"}\n\n{"positive": "good", "negative": "bad"}\n')
    pairs = read_pairs(p)
    assert [(x.positive, x.negative) for x in pairs] == [("Q: yes", "Q: no"), ("good", "bad")]
    assert pairs[1].where.endswith("pairs.jsonl:3")


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"positive": "a", "negative": "b"}\n{"positive": "a",\n', r"pairs.jsonl:2: malformed JSON"),
        ('{"positive": "a"}\n', r"pairs.jsonl:1: missing field 'negative'"),
        ('{"positive": "a", "negative": 3}\n', r"pairs.jsonl:1: field 'negative' must be a non-empty string"),
        ('["a", "b"]\n', r"pairs.jsonl:1: a pair must be a JSON object"),
        ("\n\n", r"no pairs in the file"),
    ],
)
def test_bad_files(tmp_path, text, message):
    with pytest.raises(BadInputError, match=message):
        read_pairs(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such pairs file"):
        read_pairs(tmp_path / "nope.jsonl")


def test_first_lines_keeps_every_pair_of_a_multiple_choice_line(tmp_path):
    import json

    from sadi_cpp.data.pairs import read_pairs

    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join([
        json.dumps({"prompt": "Q1", "choices": [" a", " b", " c"], "label": 0}),
        json.dumps({"positive": "x", "negative": "y"}),
        json.dumps({"prompt": "Q3", "choices": [" a", " b"], "label": 1}),
    ]) + "\n")
    pairs = read_pairs(p)
    assert len(pairs) == 4
    assert [q.where.rsplit(":", 1)[1] for q in pairs.first_lines(2)] == ["1", "1", "2"]
    assert pairs.first_lines(9) == pairs


def test_line_separators_inside_json_strings_are_text_not_line_ends(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [{"prompt": "a\u2028b", "positive": "c\u0085d", "negative": "e\x1cf\x0bg\u2029"}, {"positive": "x", "negative": "y"}]
    p.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    pairs = read_pairs(p)
    assert [x.positive for x in pairs] == ["a\u2028bc\u0085d", "x"]
    assert pairs[1].where.endswith("p.jsonl:2")


def test_deeply_nested_json_names_the_line(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text('{"positive": "a", "negative": "b"}\n' + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(BadInputError, match=r"deep.jsonl:2: JSON nested deeper than"):
        read_pairs(p)
    p.write_text('{"positive": "a", "negative": "b", "x": "' + "[" * 5000 + '"}\n')  # brackets inside a string
    assert len(read_pairs(p)) == 1
