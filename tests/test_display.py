"""display/: overlays and sheets drawn as promised, and the commands that call it find its packages when run
as scripts (``python tools/<x>.py`` puts tools/ first on sys.path, where phantom.py and leaderboard.py live)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from display.overlay import class_colours, contact_sheet, overlay
from display.sheets import write_sheet

ROOT = Path(__file__).resolve().parents[1]


def test_overlay_blends_the_class_colour_inside_the_mask_only():
    image = np.zeros((40, 30), np.uint8)
    masks = np.zeros((2, 40, 30), bool)
    masks[1, 10:30, 5:25] = True
    out = overlay(image, masks, legend=False, alpha=0.4)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    expected = (np.zeros(3, np.float32) * 0.6 + class_colours(29)[1] * 0.4).astype(np.float32).astype(np.uint8)
    np.testing.assert_array_equal(out[15:25, 10:20], np.broadcast_to(expected, (10, 10, 3)))
    assert not out[:8].any() and not out[:, 27:].any()  # outside the mask (and its contour): untouched
    assert overlay(image, masks).shape[1] > 30  # the legend is a panel to the right


def test_contact_sheet_lays_tiles_out_in_rows():
    tiles = [np.full((10, 20, 3), v, np.uint8) for v in (50, 100, 150)]
    sheet = contact_sheet(tiles, tile_height=10, pad=2)
    assert sheet.shape == (2 * 12 + 2, 2 * 22 + 2, 3)  # ceil(sqrt(3)) = 2 columns, 2 rows
    assert (sheet[2:12, 2:22] == 50).all() and (sheet[2:12, 24:44] == 100).all() and (sheet[14:24, 2:22] == 150).all()
    assert (sheet[14:24, 24:44] == 255).all()  # the empty cell stays white
    with pytest.raises(ValueError, match="no images to show"):
        contact_sheet([])


def test_write_sheet_writes_one_tile_as_it_is(tmp_path):
    tile = np.zeros((12, 16, 3), np.uint8)
    tile[:, :8] = (255, 0, 0)
    out = write_sheet([tile], tmp_path / "one.png")
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB), tile)


# The module each command imports after parsing its arguments, imported the way the command runs.
RUN_THEN_IMPORT = """
import importlib, json, runpy, sys
script, module = sys.argv[1], sys.argv[2]
sys.path[0] = str(__import__("pathlib").Path(script).parent)
runpy.run_path(script, run_name="as_a_script_without_main")
importlib.import_module(module)
print(json.dumps({name: getattr(sys.modules.get(name), "__file__", None) for name in ("leaderboard", "display")}))
"""


@pytest.mark.parametrize("script, module", [("visualize.py", "display.sheets"),
                                            ("interactive_eval.py", "display.curves"),
                                            ("viewer_screenshot.py", "display.screenshot"),
                                            ("preprocess.py", "tasks.preprocess_folder")])
def test_commands_reach_their_packages_when_run_as_scripts(script, module):
    proc = subprocess.run([sys.executable, "-c", RUN_THEN_IMPORT, str(ROOT / "tools" / script), module], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, file in files.items():
        assert file is None or Path(file) == ROOT / name / "__init__.py", (name, file)
