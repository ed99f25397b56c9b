"""The extraction CLI on real media made at test time (slow)."""

import csv
import json

import cv2
import pytest

from mmdemo.data import load_dataset, split_by_group
from mmdemo.extract import main as extract_main
from mmdemo.train import main as train_main

from tests.media import SENTENCE, astronaut, espeak, video, wer

pytestmark = pytest.mark.slow


def _speaker_per_split():
    names = [f"speaker{i}" for i in range(200)]
    split = split_by_group(names, valid=0.2, test=0.2)
    return [next(n for n, s in zip(names, split) if s == want) for want in ("train", "valid", "test")]


SPEAKERS = _speaker_per_split()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    src = tmp_path_factory.mktemp("clips")
    wav = espeak(src / "speech.wav")
    rows = []
    for i in range(6):  # talking face videos (the same face), two per speaker, one speaker per split
        video(src / f"talk{i}.mp4", audio=wav, seconds=4.0)
        rows.append({"clip_id": f"talk{i}", "label": str(1.5 - 0.5 * i), "speaker": SPEAKERS[i % 3]})
    video(src / "mute.mp4", seconds=2.0)
    rows.append({"clip_id": "mute", "label": "0.5", "speaker": "s9"})
    (src / "broken.mp4").write_bytes(b"this is not a video")
    rows.append({"clip_id": "broken", "label": "1", "speaker": "s9"})
    cv2.imwrite(str(src / "photo.jpg"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    rows.append({"clip_id": "photo", "label": "2", "speaker": "s8"})
    rows.append({"clip_id": "nothing", "label": "0", "speaker": "s7"})  # no file, no text
    rows.append({"clip_id": "unlabelled", "label": "", "speaker": "s7"})
    with open(src / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["clip_id", "label", "speaker"])
        w.writeheader()
        w.writerows(rows)
    return src


def test_extract_videos_images_and_broken_files(clips, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    args = [str(clips), "--out", str(out), "--cache", str(tmp_path / "cache"), "--quiet", "--valid", "0.2", "--test", "0.2"]
    assert extract_main(args) == 0
    printed = capsys.readouterr()
    ds = load_dataset(out)
    allsplits = {s: ds.splits[s] for s in ("train", "valid", "test")}
    ids = {i: (s, k) for s, sp in allsplits.items() for k, i in enumerate(sp.ids)}
    assert set(ids) == {f"talk{i}" for i in range(6)} | {"mute", "photo"}
    def row(cid):
        s, k = ids[cid]
        sp = allsplits[s]
        return {m: bool(sp.present[m][k]) for m in ds.modalities}, sp.text[k], sp.labels[k]

    present, text, label = row("talk0")
    assert present == {"text": True, "audio": True, "vision": True}
    assert wer(SENTENCE, text) < 0.25 and label == pytest.approx(1.5)
    assert row("mute")[0] == {"text": False, "audio": False, "vision": True}
    assert row("photo")[0] == {"text": False, "audio": False, "vision": True}
    # a speaker never spans two splits
    speakers = {f"talk{i}": SPEAKERS[i % 3] for i in range(6)}
    by_speaker = {}
    for cid, spk in speakers.items():
        by_speaker.setdefault(spk, set()).add(ids[cid][0])
    assert all(len(v) == 1 for v in by_speaker.values())
    errors = json.loads((tmp_path / "feats.errors.json").read_text())
    assert {e["id"] for e in errors} == {"broken", "nothing"}
    assert "broken files skipped" in printed.err and "no numeric label" in printed.out
    assert "present in" in printed.out

    # resume: a second run reuses every finished clip
    assert extract_main(args) == 0
    assert "resuming: 8 clips already extracted" in capsys.readouterr().out

    # and the result trains
    assert train_main(["--fusion", "weighted", "--data", str(out), "--out", str(tmp_path / "runs"), "--epochs", "2", "--quiet"]) == 0


def test_text_only_csv_with_given_splits(tmp_path):
    src = tmp_path / "txt"
    src.mkdir()
    with open(src / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["clip_id", "label", "text", "split"])
        for i, (t, y) in enumerate([("I loved it", 2.5), ("awful, boring film", -2.0), ("it was ok", 0.2), ("", 0.0)] * 3):
            w.writerow([f"c{i}", y, t, ("train", "valid", "test")[i % 3]])
    out = tmp_path / "t.npz"
    assert extract_main([str(src), "--out", str(out), "--modalities", "text", "--quiet", "--cache", str(tmp_path / "c")]) == 0
    ds = load_dataset(out)
    assert ds.modalities == ("text",) and [len(ds.splits[s]) for s in ("train", "valid", "test")] == [4, 4, 4]
    assert ds.splits["train"].present["text"].sum() == 3  # the empty transcript is absent


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        extract_main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")])
    (tmp_path / "labels.csv").write_text("clip_id,score\na,1\n")
    with pytest.raises(SystemExit):
        extract_main([str(tmp_path), "--out", str(tmp_path / "x.npz")])
    with pytest.raises(SystemExit):
        extract_main([str(tmp_path), "--out", str(tmp_path / "x.npz"), "--modalities", "smell"])
    # the Ray options without --ray, or out of range: refused before anything starts
    for extra in (["--workers", "2"], ["--gpus-per-worker", "1"], ["--item-timeout", "30"], ["--ray", "--item-timeout", "0"],
                  ["--ray", "--workers", "0"]):
        with pytest.raises(SystemExit) as err:
            extract_main([str(tmp_path), "--out", str(tmp_path / "x.npz")] + extra)
        assert err.value.code == 2, extra


def test_labels_that_would_mix_up_clips_are_refused(tmp_path):
    from mmdemo.extract import read_items

    for dup, text in (("'a'", "path,label\nspk1/a.wav,1\nspk2/a.wav,-1\n"),  # the same file name in two folders
                      ("'x'", "clip_id,label,text\nx,1,good\nx,-1,bad\n")):  # the same id twice
        (tmp_path / "labels.csv").write_text(text)
        with pytest.raises(SystemExit, match="more than one row") as err:  # one clip's features would be given to both
            read_items(tmp_path, tmp_path / "labels.csv")
        assert dup in str(err.value)
    (tmp_path / "labels.csv").write_text("clip_id,label,text\nx,1,café\n", encoding="latin-1")  # as old spreadsheets save it
    with pytest.raises(SystemExit, match="not UTF-8"):
        read_items(tmp_path, tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("clip_id,label,text\nx,1,café\ny,-1,bad\n", encoding="utf-8")
    items, _ = read_items(tmp_path, tmp_path / "labels.csv")
    assert [i.id for i in items] == ["x", "y"] and items[0].text == "café"


@pytest.mark.parametrize("extra", [["--fps", "0"], ["--fps", "-2"], ["--max-frames", "0"], ["--limit-per-split", "0"],
                                   ["--valid", "1.2"], ["--valid", "0.5", "--test", "0.5"], ["--device", "tpu"]])
def test_out_of_range_options_are_refused_before_any_file_is_read(tmp_path, extra):
    (tmp_path / "labels.csv").write_text("clip_id,label,text\na,1,good\n")
    with pytest.raises(SystemExit) as err:
        extract_main([str(tmp_path), "--out", str(tmp_path / "x.npz"), "--no-transcribe"] + extra)
    assert err.value.code == 2 and not (tmp_path / "x.npz").exists()


def test_an_audio_only_mp4_gives_voice_and_no_face(tmp_path):
    import subprocess

    from tests.media import need

    need("ffmpeg")
    src = tmp_path / "clips"
    src.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(espeak(tmp_path / "s.wav")), "-vn", "-c:a", "aac", str(src / "memo.mp4")],
                   check=True, capture_output=True)
    (src / "broken.mp4").write_bytes(b"not a video at all")
    (src / "labels.csv").write_text("clip_id,path,label,split\nmemo,memo.mp4,1,train\nbroken,broken.mp4,1,train\n")
    out = tmp_path / "f.npz"
    assert extract_main([str(src), "--out", str(out), "--modalities", "audio,vision", "--no-transcribe", "--quiet",
                         "--cache", str(tmp_path / "cache")]) == 0
    tr = load_dataset(out).splits["train"]
    assert list(tr.ids) == ["memo"] and tr.present["audio"][0] and not tr.present["vision"][0]
    errors = json.loads((tmp_path / "f.errors.json").read_text())
    assert [e["id"] for e in errors] == ["broken"]  # a file with neither frames nor sound is still an error
