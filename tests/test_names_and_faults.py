"""Names that become paths stay inside their folders (tasks.formats.names), and the last tracebacks and unclear
lines of issue 23 end in one clear line: BOM, --select over task folders, a truncated keypoints.npz, bad
overrides, decompression bombs, non-UTF-8 file names, a bone labelled twice, the read-only array warning."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.cli import run_main
from engine.config import ConfigError, load_config
from engine.run_folder import check_dataset
from ensembles.config import load_ensemble_config
from tasks.formats import FormatError, aasce, dha, rsna
from tasks.formats.handbones import CLASSES, list_samples, mislabelled_bones, read_polygons, write_polygons
from tasks.formats.images import MAX_PIXELS_ENV, image_size, read_grey, write_png
from tasks.formats.names import check_name, name_problem
from tasks.formats.shs import SHS15_NAMES, write_coords
from tasks.formats.submissions import read_ages
from tasks.keypoint_labels import read_wide
from tasks.submission import iter_images

ROOT = Path(__file__).resolve().parents[1]
SEG = {"task": "segmentation", "data": {"root": "x/train"}, "model": {"name": "smp:unet/resnet18"}}


@pytest.mark.parametrize("name, problem", [
    ("../../../x", "'../../../x' holds a path separator; a name is one file or folder name, not a path"),
    ("a\\b", "'a\\\\b' holds a path separator; a name is one file or folder name, not a path"),
    ("/etc/passwd", "'/etc/passwd' holds a path separator; a name is one file or folder name, not a path"),
    ("..", "'..' names a folder itself, not a file or folder inside it"),
    (".", "'.' names a folder itself, not a file or folder inside it"),
    ("C:x", "'C:x' is a drive (an absolute path), not a name"),
    ("", "empty name"),
    ("  ", "empty name"),
    ("a\nb", "'a\\nb' holds a control character"),
    ("a\x00b", "'a\\x00b' holds a control character"),
    ("img\udcff.png", "'img\\udcff.png' is not valid UTF-8 (a file name written in another encoding); rename it"),
])
def test_a_name_that_is_not_one_path_component_is_refused(name, problem):
    assert name_problem(name) == problem
    with pytest.raises(FormatError) as err:
        check_name(name, "where")
    assert str(err.value) == f"where: {problem}"


@pytest.mark.parametrize("name", ["run-1", "sunhl-1th-02-Jan-2017-162 A AP.jpg", "image1661130828152_R.png", "..x",
                                  "é", "10001"])
def test_plain_names_pass(name):
    assert name_problem(name) is None and check_name(name, "where") == name


def test_a_run_name_with_dots_ends_as_one_line_and_writes_nothing_outside_out_dir(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "runs"
    config = tmp_path / "a" / "exp.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({**SEG, "logging": {"out_dir": str(out)}}))
    import train

    assert train.main(["-c", str(config), "--logging.run_name=../../../x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {config}: 'logging.run_name': '../../../x' holds a path separator; a name is one file "
                   "or folder name, not a path (got '../../../x')")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "exp.yaml"]


def test_a_config_name_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'name': '\.\./up' holds a path separator"):
        load_config(None, {**SEG, "name": "../up"})


def test_an_ensemble_name_with_dots_ends_as_one_line_and_writes_nothing(tmp_path, capsys):
    from tools import fit_ensemble

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"task": "boneage", "method": "mean", "name": "../../../x",
                                    "out_dir": str(tmp_path / "a" / "runs"), "members": [{"run": "r1"}, {"run": "r2"}]}))
    assert run_main(fit_ensemble.main, [str(path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {path}: 'name': '../../../x' holds a path separator; a name is "
                                               "one file or folder name, not a path")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["e.yaml"]
    with pytest.raises(ConfigError):
        load_ensemble_config(path)


def test_a_selection_name_with_dots_is_refused(tmp_path):
    from ensembles.select import select_ensemble

    with pytest.raises(FormatError, match=r"^--name \(the ensemble's folder\): '\.\./x' holds a path separator"):
        select_ensemble(tmp_path, name="../x")


def test_a_sweep_study_name_with_dots_is_refused():
    from sweeps.runner import SweepError, resolve_storage

    with pytest.raises(SweepError) as err:
        resolve_storage(None, "../../x", 1)
    assert str(err.value) == ("study name (--study-name, or name: in the sweep file): '../../x' holds a path "
                              "separator; a name is one file or folder name, not a path")


def test_an_rsna_id_that_is_a_path_never_reaches_a_file_outside_data_root(tmp_path):
    from tasks.boneage.task import BoneAgeTask

    root = tmp_path / "data" / "boneage"
    images = root / "boneage-training-dataset"
    images.mkdir(parents=True)
    for i in range(4):
        write_png(images / f"{i}.png", np.full((32, 32), 40 * i, np.uint8))
    write_png(tmp_path / "outside.png", np.zeros((32, 32), np.uint8))   # what ../../outside would read
    rows = ["id,boneage,male"] + [f"{i},{20 + i},True" for i in range(4)] + ["../../outside,30,False"]
    (root / "boneage-training-dataset.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, {"task": "boneage", "data": {"root": str(root), "image_size": 32, "n_folds": 2},
                             "model": {"name": "timm:resnet10t"}})
    with pytest.raises(FormatError) as err:
        BoneAgeTask(cfg).datasets()
    assert str(err.value) == (f"{root / 'boneage-training-dataset.csv'}: line 6, column 'id': '../../outside' holds a "
                              "path separator; a name is one file or folder name, not a path")


SHS_HEADER = "img_id," + ",".join(f"{n}_x" for n in SHS15_NAMES) + "," + ",".join(f"{n}_y" for n in SHS15_NAMES)


@pytest.mark.parametrize("write, read, message", [
    (lambda p: p.write_text(SHS_HEADER + "\n../x," + ",".join(["1"] * 30) + "\n"), read_wide,
     "line 2, column 'img_id': '../x' holds a path separator"),
    (lambda p: p.write_text("../x," + ",".join(["1"] * 74) + "\n"), dha.read_all, "line 1: '../x' holds a path separator"),
    (lambda p: p.write_text("id,spacing_mm\n..,0.1\n"), dha.read_spacing,
     "line 2, column 'id': '..' names a folder itself"),
    (lambda p: p.write_text("ok.jpg\n/etc/passwd\n"), aasce.read_filenames, "line 2: '/etc/passwd' holds a path separator"),
    (lambda p: p.write_text("id,boneage\n/abs,12\n"), read_ages, "line 2, column 'id': '/abs' holds a path separator"),
    (lambda p: p.write_text("id,boneage\nC:x,12\n"), rsna.read_submission, "line 2: 'C:x' is a drive"),
    (lambda p: p.write_text("image_name,class,rle\n../a.png,finger-1,\n"), lambda p: list(iter_images(p)),
     "2: image_name: '../a.png' holds a path separator"),
])
def test_every_reader_names_the_row_of_an_id_that_is_a_path(tmp_path, write, read, message):
    path = tmp_path / "file.csv"
    write(path)
    with pytest.raises(FormatError) as err:
        read(path)
    assert str(err.value).startswith(f"{path}: {message}") or str(err.value).startswith(f"{path}:{message}")


def _handbone_root(tmp_path: Path, names: list[bytes]) -> Path:
    root = tmp_path / "hb"
    for name in names:
        folder = root / "DCM" / "ID001"
        folder.mkdir(parents=True, exist_ok=True)
        write_png(folder / "tmp.png", np.zeros((8, 8), np.uint8))
        os.rename(os.fsencode(folder / "tmp.png"), os.fsencode(folder) + b"/" + name)
    return root


def test_a_file_name_that_is_not_utf8_is_named_in_one_line(tmp_path):
    root = _handbone_root(tmp_path, [b"image1.png", b"img\xff.png"])
    with pytest.raises(FormatError) as err:
        list_samples(root, labels=None)
    assert str(err.value) == (f"{root / 'DCM' / 'ID001'}: 'img\\udcff.png' is not valid UTF-8 (a file name written "
                              "in another encoding); rename it")
    from tasks.preprocess_folder import list_images

    with pytest.raises(FormatError, match="is not valid UTF-8"):
        list_images(root, recursive=True)


def test_a_utf8_bom_is_accepted_in_csv_json_and_yaml(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "labels.csv").write_bytes(bom + b"id,boneage,male\n1377,180,False\n")
    assert rsna.read_labels(tmp_path / "labels.csv")["id"].tolist() == ["1377"]
    (tmp_path / "ages.csv").write_bytes(bom + b"id,boneage\n1377,180\n")
    assert rsna.read_submission(tmp_path / "ages.csv")["boneage"].tolist() == [180.0]
    (tmp_path / "all.csv").write_bytes(bom + b"3128," + b",".join([b"1"] * 74) + b"\n")
    assert dha.read_all(tmp_path / "all.csv")[0] == ["3128"]
    (tmp_path / "filenames.csv").write_bytes(bom + b"a b.jpg\n")
    assert aasce.read_filenames(tmp_path / "filenames.csv") == ["a b.jpg"]
    polygons = {"Radius": [np.array([[1.0, 1.0], [6.0, 1.0], [6.0, 6.0]])]}
    write_polygons(tmp_path / "a.json", polygons)
    (tmp_path / "a.json").write_bytes(bom + (tmp_path / "a.json").read_bytes())
    assert np.array_equal(read_polygons(tmp_path / "a.json")["Radius"][0], polygons["Radius"][0])
    (tmp_path / "exp.yaml").write_bytes(bom + yaml.safe_dump(SEG).encode())
    assert load_config(tmp_path / "exp.yaml").task == "segmentation"
    write_coords(tmp_path / "coord_list.csv", ["a.png"], np.ones((1, 15, 2)))
    (tmp_path / "coord_list.csv").write_bytes(bom + (tmp_path / "coord_list.csv").read_bytes())
    assert read_wide(tmp_path / "coord_list.csv")[0] == ["a.png"]


def _finished(run: Path) -> None:
    run.mkdir(parents=True)
    for name in ("config.yaml", "summary.json", "best.pt"):
        (run / name).write_text("{}")


def test_select_on_a_folder_of_task_folders_gives_the_documented_line(tmp_path, monkeypatch, capsys):
    from tools import fit_ensemble

    monkeypatch.chdir(tmp_path)
    _finished(tmp_path / "runs" / "boneage" / "a-f0")
    _finished(tmp_path / "runs" / "keypoints" / "b-f0")
    assert run_main(fit_ensemble.main, ["--select", "runs", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("error: runs: holds runs of several tasks (boneage: a-f0, keypoints: "
                                               "b-f0); select from one task's folder, e.g. runs/boneage")
    shutil.rmtree(tmp_path / "runs" / "keypoints")
    assert run_main(fit_ensemble.main, ["--select", "runs", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("error: runs: holds no runs itself; its boneage runs are in "
                                               "runs/boneage: select from that folder")


def test_a_truncated_keypoint_cache_is_one_line_naming_it(tmp_path):
    from tasks.keypoints.cache import load_cache, save_cache

    path = save_cache(tmp_path, ["a.png", "b.png"], np.zeros((2, 15, 2)), np.ones((2, 15)), "shs15")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(FormatError) as err:
        load_cache(path)
    assert str(err.value).startswith(f"{path}: not a keypoint prediction cache (BadZipFile: ")


def _config(folder: Path) -> Path:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(SEG))
    return path


@pytest.mark.parametrize("override, message", [
    ("--model.options={", "override '--model.options={': not a valid value (expected the node content, but found "
                          "'<stream end>'); a mapping is written {key: value, ...}, text with YAML's special characters "
                          "in quotes"),
    ("--model.options={a: }", "override '--model.options={a: }': key 'a' has no value; write one after its colon (an "
                              "empty value is written null)"),
    ("--model.options={encoder_depth: 3, decoder: {attention: }}", "key 'decoder.attention' has no value"),
])
def test_a_malformed_mapping_override_is_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path), [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_python_tag_in_an_override_constructs_nothing(tmp_path):
    marker = tmp_path / "made"
    for value in (f"!!python/object/apply:os.mkdir [{marker}]", f"{{a: !!python/object/apply:os.mkdir [{marker}]}}"):
        with pytest.raises(ConfigError) as err:
            load_config(_config(tmp_path), [f"--model.options={value}"])
        assert str(err.value) == (f"override '--model.options={value}': could not determine a constructor for the tag "
                                  "'tag:yaml.org,2002:python/object/apply:os.mkdir'; a value is plain YAML (numbers, "
                                  "text, lists, mappings), nothing is constructed from it")
    assert not marker.exists()
    assert load_config(_config(tmp_path), ["--model.options={a: null}"]).model.options == {"a": None}


def _png_header(path: Path, width: int, height: int) -> Path:
    """A small PNG file whose header claims ``width x height`` pixels (its pixel data is short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = _png_header(tmp_path / "bomb.png", 20000, 20000)
    for read in (read_grey, image_size):
        with pytest.raises(FormatError) as err:
            read(bomb)
        assert str(err.value) == (f"{bomb}: 400000000 pixels, above the limit of 67108864 (a decompression bomb?); "
                                  f"refused before decoding; a genuine image this large needs {MAX_PIXELS_ENV}=400000000")
    big = _png_header(tmp_path / "big.png", 9000, 8000)
    with pytest.raises(FormatError, match=r"big.png: 9000x8000 = 72000000 pixels, above the limit of 67108864"):
        image_size(big)
    monkeypatch.setenv(MAX_PIXELS_ENV, "72000000")
    assert image_size(big) == (8000, 9000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(FormatError, match=f"^{MAX_PIXELS_ENV}='lots': not a positive whole number of pixels$"):
        image_size(big)


def _bone_squares(labels: list[str]) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for k, label in enumerate(labels):
        x, y = 2 + 6 * (k % 8), 2 + 6 * (k // 8)
        out.setdefault(label, []).append(np.array([[x, y], [x + 4, y], [x + 4, y + 4], [x, y + 4]], np.float64))
    return out


def test_a_bone_labelled_twice_and_missing_is_warned_about_and_counted(tmp_path, capsys):
    from tasks.segmentation.task import HandboneDataset

    root = tmp_path / "hb"
    swapped = [c if c != "Trapezoid" else "Trapezium" for c in CLASSES]   # Trapezoid annotated as Trapezium
    for patient, labels in (("ID001", list(CLASSES)), ("ID002", swapped)):
        write_png(root / "DCM" / patient / "image1.png", np.zeros((48, 48), np.uint8))
        write_polygons(root / "outputs_json" / patient / "image1.json", _bone_squares(labels))
    bad = root / "outputs_json" / "ID002" / "image1.json"
    assert mislabelled_bones(bad) == [f"{bad}: no annotation of Trapezoid, while Trapezium 2 times appears; a label "
                                      "may name the wrong bone"]
    assert mislabelled_bones(root / "outputs_json" / "ID001" / "image1.json") == []
    # a growing hand: long bones in two pieces (shaft and epiphysis), the pisiform not yet ossified
    young = [c for c in CLASSES if c != "Pisiform"] + [c for c in CLASSES if c.startswith("finger-")] + ["Radius"]
    write_png(root / "DCM" / "ID003" / "image1.png", np.zeros((48, 48), np.uint8))
    write_polygons(root / "outputs_json" / "ID003" / "image1.json", _bone_squares(young))
    assert mislabelled_bones(root / "outputs_json" / "ID003" / "image1.json") == []
    (root / "outputs_json" / "ID003" / "image1.json").unlink()
    (root / "DCM" / "ID003" / "image1.png").unlink()
    dataset = HandboneDataset(list_samples(root), 32)
    assert check_dataset([dataset]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {bad}: no annotation of Trapezoid, while Trapezium 2 times appears; a label may name the wrong bone",
        "warning: 1 of 2 samples have labels that look wrong (above); training goes on with them as they are"]
    json.loads(bad.read_text())   # the file itself is untouched and still valid


def test_segmentation_inference_hands_torch_no_read_only_array(monkeypatch):
    from engine.predictor import LoadedModel, Predictor, to_device
    from tasks.tta import View

    cfg = load_config(None, {**SEG, "data": {"root": "x", "image_size": 16}})
    image = np.zeros((16, 16), np.uint8)
    image.flags.writeable = False   # as PIL hands out decoded images
    real = torch.from_numpy

    def writable_only(array: np.ndarray) -> torch.Tensor:
        assert array.flags.writeable, "a read-only array reached torch.from_numpy"
        return real(array)

    monkeypatch.setattr(torch, "from_numpy", writable_only)
    model = torch.nn.Conv2d(1, len(CLASSES), 1)
    predictor = Predictor(LoadedModel(model, cfg, Path("m")), [View()], torch.device("cpu"))
    probs = predictor(to_device(predictor.task.image_batch(image, 16), predictor.device))
    assert probs.shape == (1, len(CLASSES), 16, 16)
