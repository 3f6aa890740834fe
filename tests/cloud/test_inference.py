def test_birdnet_only_manifest_is_replaced_atomically_and_repaired(tmp_path):
    """The service's processes write the BirdNET-only package at the same start, and a process
    killed while writing must not leave a manifest that refuses every later start."""
    import json

    from cloud.inference import birdnet_only_package
    from shared_features.labels import taxonomy_path

    root = tmp_path / "packages" / "birdnet-only"
    birdnet_only_package(root, taxonomy_path(None))
    good = (root / "package.json").read_text()
    assert json.loads(good)["name"] == "birdnet-only"
    (root / "package.json").write_text("")  # what a kill mid-write left before
    birdnet_only_package(root, taxonomy_path(None))
    assert (root / "package.json").read_text() == good
    assert sorted(p.name for p in root.iterdir()) == ["package.json"]  # no temporary file left
