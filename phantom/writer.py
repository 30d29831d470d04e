"""Write a phantom dataset in the three real competition layouts (see phantom/README.md).

::

    OUT/handbones/train/DCM/IDxxx/image<13 digits>_{L,R}.png       two hands per patient
    OUT/handbones/train/outputs_json/IDxxx/<same stem>.json         poly_seg polygons, 29 classes
    OUT/handbones/test/DCM/IDxxx/...png                             no labels
    OUT/handbones/test_gt/outputs_json/IDxxx/...json                answers for local scoring
    OUT/handbones/meta_data.csv                                     ID,age_months,sex,height_cm,weight_kg
    OUT/boneage/boneage-training-dataset.csv                        id,boneage,male
    OUT/boneage/boneage-training-dataset/<id>.png
    OUT/boneage/boneage-test-dataset.csv                            id,male
    OUT/boneage/boneage-test-dataset/<id>.png
    OUT/boneage/boneage-test-answers.csv                            id,boneage
    OUT/joints/images/<id>.png                                      the same hands
    OUT/joints/coord_list.csv                                       SHS_NET: img_id,IP_x..W5_x,IP_y..W5_y
    OUT/joints/all.csv                                              DHA: no header, id + 37 x,y pairs
    OUT/joints/spacing.csv                                          id,spacing_mm
    OUT/joints/split.csv                                            img_id,split (train/test)
    OUT/orientation/{train,test}/labels.csv, images/<img_id>.png    SHS_NET orientation: img_id,label,patient
    OUT/phantom.json                                                how it was made

Every image is rendered once and hard-linked (or copied) into the three layouts. Image ``k`` of
patient ``g`` is drawn from ``numpy.random.default_rng([seed, g, k])``: the output does not depend on
the number of workers, and the same seed gives byte-identical files.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

import phantom.anatomy as A
from phantom.orientation import write_orientation
from phantom.render import render
from core.atomic import write_text
from tasks.formats.handbones import write_polygons
from tasks.formats.images import write_png

TS_BASE = 1_660_000_000_000   # image names: 'image' + 13 digits (a millisecond timestamp, as in the real data)
ID_BASE = 10_000              # bone-age / joints ids: ID_BASE + image index
ORIENTATION_SIZE = 128        # orientation films: a classifier reads them at low resolution


def _csv_text(header: list[str] | None, rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def plan(n_train: int, n_test: int, seed: int) -> list[dict]:
    """One entry per image: split, patient number/ID, side, image name, numeric id."""
    jobs = []
    index = 0
    g = 0
    for split, n in (("train", n_train), ("test", n_test)):
        n_pat = math.ceil(n / 2)
        for j in range(n_pat):
            rng = np.random.default_rng([seed, g, 0])
            ts = TS_BASE + g * 100_000 + int(rng.integers(0, 40_000))
            for k, side in enumerate(("L", "R")):
                if 2 * j + k >= n:
                    break
                jobs.append(dict(split=split, g=g, k=k, side=side, patient=f"ID{g + 1:03d}",
                                 stem=f"image{ts + 50_000 * k}_{side}", id=str(ID_BASE + index)))
                index += 1
            g += 1
    return jobs


def patient_for(seed: int, g: int) -> A.Patient:
    """The patient ``g`` of a seed (age, sex, size, maturity, hand shape)."""
    return A.sample_patient(np.random.default_rng([seed, g, 0]))


def _render_job(args) -> dict:
    import cv2

    cv2.setNumThreads(1)
    job, out, size, seed, film = args
    out = Path(out)
    patient = patient_for(seed, job["g"])
    rng = np.random.default_rng([seed, job["g"], 1 + job["k"]])
    hand = A.build_hand(patient, rng)
    ph = render(hand, size, rng, job["side"], film)
    split = job["split"]
    png = out / "handbones" / split / "DCM" / job["patient"] / f"{job['stem']}.png"
    write_png(png, ph.image)
    label_root = out / "handbones" / ("train" if split == "train" else "test_gt") / "outputs_json"
    write_polygons(label_root / job["patient"] / f"{job['stem']}.json", ph.polygons)
    ba_dir = "boneage-training-dataset" if split == "train" else "boneage-test-dataset"
    _link(png, out / "boneage" / ba_dir / f"{job['id']}.png")
    _link(png, out / "joints" / "images" / f"{job['id']}.png")
    return dict(id=job["id"], age=int(round(patient.age_months)), male=patient.male,
                keypoints={n: ph.keypoints[n] for n in A.DHA37_NAMES + A.SHS15_NAMES},
                spacing=ph.spacing_mm)


def generate(out_dir, n_train: int, n_test: int, size: int = 512, seed: int = 0, workers: int | None = None,
             progress: bool = False, film: float = 0.0) -> dict:
    """Render ``n_train + n_test`` hands (two per patient) into ``out_dir`` in all three layouts.

    Returns a summary dict (counts, paths). ``workers`` defaults to ``min(cpu_count, 4)``. ``film``: the
    share of images with a scanned film's grey background (see :func:`phantom.render.render`).
    """
    from tasks.formats.dha import write_all, write_spacing
    from tasks.formats.shs import write_coords

    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: image counts are >= 0 and not both 0")
    if size < 32:
        raise ValueError(f"size {size} too small (at least 32 px)")
    if not 0.0 <= film <= 1.0:
        raise ValueError(f"film: {film} is not a share of the images (0 to 1)")
    if workers is not None and workers < 0:
        raise ValueError(f"workers={workers}: a number of processes is >= 0 (0: the default)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("handbones", "boneage", "joints", "orientation"):   # a rerun replaces, never mixes, datasets
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    jobs = plan(n_train, n_test, seed)
    workers = workers or min(os.cpu_count() or 1, 4)
    args = [(j, str(out), size, seed, film) for j in jobs]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        # spawn, not fork: a forked child inherits OpenCV's thread-pool state from a parent that already used
        # OpenCV with threads, and cv2.setNumThreads then blocks forever in the child
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            results = list(_progress(pool.imap(_render_job, args, chunksize=max(1, len(jobs) // (8 * workers))),
                                     len(jobs), progress))
    else:
        results = list(_progress(map(_render_job, args), len(jobs), progress))

    # --- bone age (RSNA)
    ba = out / "boneage"
    train = [(j, r) for j, r in zip(jobs, results) if j["split"] == "train"]
    test = [(j, r) for j, r in zip(jobs, results) if j["split"] == "test"]
    write_text(ba / "boneage-training-dataset.csv",
                _csv_text(["id", "boneage", "male"], [[r["id"], r["age"], str(r["male"])] for _, r in train]))
    write_text(ba / "boneage-test-dataset.csv", _csv_text(["id", "male"], [[r["id"], str(r["male"])] for _, r in test]))
    write_text(ba / "boneage-test-answers.csv", _csv_text(["id", "boneage"], [[r["id"], r["age"]] for _, r in test]))
    for d in ("boneage-training-dataset", "boneage-test-dataset"):
        (ba / d).mkdir(parents=True, exist_ok=True)

    # --- hand bones metadata (one row per patient)
    meta_rows = []
    seen = set()
    for j in jobs:
        if j["patient"] in seen:
            continue
        seen.add(j["patient"])
        p = patient_for(seed, j["g"])
        hcm, wkg = A.height_weight(p.age_months, p.male, np.random.default_rng([seed, j["g"], 99]))
        meta_rows.append([j["patient"], int(round(p.age_months)), "M" if p.male else "F", hcm, wkg])
    write_text(out / "handbones" / "meta_data.csv",
                _csv_text(["ID", "age_months", "sex", "height_cm", "weight_kg"], meta_rows))
    for split in ("train", "test"):
        (out / "handbones" / split / "DCM").mkdir(parents=True, exist_ok=True)
    (out / "handbones" / "train" / "outputs_json").mkdir(parents=True, exist_ok=True)
    (out / "handbones" / "test_gt" / "outputs_json").mkdir(parents=True, exist_ok=True)

    # --- joints (SHS_NET 15 + DHA 37 over the same images)
    jd = out / "joints"
    (jd / "images").mkdir(parents=True, exist_ok=True)
    ids = [r["id"] for r in results]
    shs = np.array([[r["keypoints"][n] for n in A.SHS15_NAMES] for r in results]).reshape(-1, 15, 2)
    dha = np.array([[r["keypoints"][n] for n in A.DHA37_NAMES] for r in results]).reshape(-1, 37, 2)
    write_coords(jd / "coord_list.csv", [f"{i}.png" for i in ids], shs, A.SHS15_NAMES)
    write_all(jd / "all.csv", ids, dha)
    write_spacing(jd / "spacing.csv", {r["id"]: r["spacing"] for r in results})
    write_text(jd / "split.csv", _csv_text(["img_id", "split"], [[f"{j['id']}.png", j["split"]] for j in jobs]))

    # --- orientation (SHS_NET 12 classes): films of their own patients, a quarter as many as hands
    osize = min(size, ORIENTATION_SIZE)
    films = {split: write_orientation(out / "orientation" / split, max(1, n // 8), osize, seed + (split == "test"),
                                      prefix=f"{split}_") for split, n in (("train", n_train), ("test", n_test)) if n}

    summary = dict(generator="phantom", version=1, seed=seed, size=size, film=film, n_train=n_train, n_test=n_test,
                   patients=len(seen), classes=list(A.CLASSES), shs15=list(A.SHS15_NAMES),
                   dha37=list(A.DHA37_NAMES), orientation_films=films, orientation_size=osize)
    write_text(out / "phantom.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _progress(it, total, enabled):
    if not enabled:
        yield from it
        return
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        yield from it
        return
    yield from tqdm(it, total=total, unit="img", desc="phantom")
