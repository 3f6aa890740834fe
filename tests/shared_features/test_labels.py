from __future__ import annotations

import numpy as np
import pytest

from shared_features import LabelError, LabelSpace, parse_secondary_labels


@pytest.fixture(scope="module")
def space(mini) -> LabelSpace:
    return LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")


def test_taxonomy_206_species_in_file_order(space, mini):
    assert len(space) == 206
    assert space.class_counts() == {"Insecta": 17, "Amphibia": 34, "Aves": 146, "Mammalia": 9}
    first = (mini / "taxonomy.csv").read_text().splitlines()[1].split(",")[0]
    assert space.codes[0] == first == "1139490"
    s = space["turvul"]
    assert (s.scientific_name, s.common_name, s.taxon_class) == ("Cathartes aura", "Turkey Vulture", "Aves")
    assert "Turkey Vulture" in s.display() and "turvul" in s.display()


def test_roundtrip(space):
    again = LabelSpace.from_json(space.to_json())
    assert again == space and again.digest() == space.digest()
    d = space.to_dict()
    d["species"][0]["common_name"] = "tampered"
    with pytest.raises(LabelError, match="digest"):
        LabelSpace.from_dict(d)


def test_encode_decode(space):
    y = space.encode("greegr", ["socfly1"], secondary_weight=0.5)
    assert y.dtype == np.float32 and y.sum() == 1.5
    assert y[space.index("greegr")] == 1.0 and y[space.index("socfly1")] == 0.5
    assert [s.code for s in space.decode(y, threshold=0.4)] == ["greegr", "socfly1"]
    top = space.top_k(y, 2)
    assert top[0][0].code == "greegr" and top[1][1] == 0.5


def test_unknown_labels_are_errors(space):
    with pytest.raises(LabelError, match="class_97"):
        space.encode("class_97")
    with pytest.raises(LabelError, match="nope"):
        space.encode("greegr", ["nope"])
    with pytest.raises(LabelError, match="206"):
        space.decode(np.zeros(5))


def test_duplicates_and_bad_taxonomy(tmp_path):
    p = tmp_path / "taxonomy.csv"
    p.write_text("primary_label,scientific_name\nx,Y\n")
    with pytest.raises(LabelError, match="common_name"):
        LabelSpace.from_taxonomy_csv(p)
    p.write_text("primary_label,scientific_name,common_name,class_name\na,A a,A,Aves\na,A a,A,Aves\n")
    with pytest.raises(LabelError, match="duplicate"):
        LabelSpace.from_taxonomy_csv(p)


@pytest.mark.parametrize(
    "cell,expected",
    [
        ("[]", []),
        ("['']", []),
        ("", []),
        (None, []),
        ("['socfly1']", ["socfly1"]),
        ("['a', 'b']", ["a", "b"]),
        (["a", ""], ["a"]),
    ],
)
def test_secondary_labels(cell, expected):
    assert parse_secondary_labels(cell) == expected


def test_secondary_labels_malformed():
    with pytest.raises(LabelError, match="malformed"):
        parse_secondary_labels("['a'")


def test_packaged_label_space_is_birdclef_2025(mini):
    """The label space that ships with the package is BirdCLEF 2025's taxonomy, row for row."""
    from shared_features.labels import DEFAULT_TAXONOMY

    default = LabelSpace.default()
    assert len(default) == 206
    assert default.class_counts() == {"Aves": 146, "Amphibia": 34, "Insecta": 17, "Mammalia": 9}
    assert default == LabelSpace.from_taxonomy_csv(mini / "taxonomy.csv")
    assert DEFAULT_TAXONOMY.is_file()


def test_taxonomy_path_resolves_against_the_working_directory(tmp_path, monkeypatch, mini):
    from shared_features.labels import DEFAULT_TAXONOMY, taxonomy_path

    assert taxonomy_path(None) == DEFAULT_TAXONOMY
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "taxonomy.csv").write_bytes((mini / "taxonomy.csv").read_bytes())
    monkeypatch.chdir(tmp_path)
    p = taxonomy_path("sub/taxonomy.csv")
    assert p.is_absolute() and p == (tmp_path / "sub" / "taxonomy.csv").resolve()
    with pytest.raises(LabelError, match=str(tmp_path / "missing.csv")):
        taxonomy_path("missing.csv")
