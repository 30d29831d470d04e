"""The front page and the manual hold together: README.md stays a front page (at most 150 lines) whose command
table names every command, every relative link of README.md and docs/*.md reaches a file that exists (and a
heading of it, where the link names one), and every command they show names a script, files and options that
exist."""
from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The Markdown without its code blocks and code spans (where brackets and '#' are not links or headings)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, '_' and '-' kept),
    spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def test_readme_is_a_front_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; the front page stays within {MAX_README_LINES}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A dead file, a dead anchor and a link inside code are told apart; slugs follow GitHub's rule."""
    (tmp_path / "b.md").write_text("# Keypoints on real SHS_NET, DHA and AASCE images\n## What `make demo` prints\n"
                                   "## Again\n## Again\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#what-make-demo-prints) [ok](b.md#keypoints-on-real-shs_net-dha-and-aasce-images) "
                    "[ok](b.md#again-1) [gone](c.md) [bad anchor](b.md#not-a-heading) `[in code](x.md)`\n"
                    "```\n[in a block](y.md)\n```\n")
    assert links(page) == ["b.md#what-make-demo-prints", "b.md#keypoints-on-real-shs_net-dha-and-aasce-images",
                           "b.md#again-1", "c.md", "b.md#not-a-heading"]
    assert anchors(tmp_path / "b.md") == {"keypoints-on-real-shs_net-dha-and-aasce-images", "what-make-demo-prints",
                                          "again", "again-1"}
    with pytest.raises(AssertionError, match=r"c\.md: no file.*#not-a-heading: no heading"):
        test_every_relative_link_reaches_a_file_and_its_heading(page)


def commands(page: Path) -> list[list[str]]:
    """The `python ...` lines of a page's shell blocks (continued lines joined), as argument lists without
    their comments."""
    blocks = re.findall(r"^```bash\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("python ")]


@functools.lru_cache(maxsize=None)
def help_text(script: str) -> str:
    done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} --help failed: {done.stderr[-500:]}"
    return done.stdout


def test_the_front_page_shows_every_workflow():
    scripts = {args[1] for args in commands(README)}
    assert {"train.py", "inference.py", "tools/sweep.py", "tools/fit_ensemble.py", "tools/score.py",
            "tools/leaderboard.py"} <= scripts, sorted(scripts)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_shown_names_what_exists(page):
    """Scripts, config files and options as written (a `<placeholder>` stands for the reader's own file); a
    dotted override of `train.py -c` is a key its config accepts."""
    from engine.config import load_config

    for args in commands(page):
        shown, script = " ".join(args), args[1]
        assert (ROOT / script).is_file(), f"{page.name}: {shown}: no script {script}"
        for arg in args[2:]:
            if arg.startswith(("configs/", "sweep_config")) and "<" not in arg:
                assert (ROOT / arg).is_file(), f"{page.name}: {shown}: no file {arg}"
            option = arg.split("=", 1)[0]
            if option.startswith("--") and "." not in option:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text(script)), \
                    f"{page.name}: {shown}: {script} takes no option {option}"
        overrides = [a for a in args if a.startswith("--") and "." in a.split("=", 1)[0]]
        if script == "train.py" and "-c" in args and overrides:
            load_config(ROOT / args[args.index("-c") + 1], overrides)


def test_the_command_table_names_every_command():
    """Every tool and every make target appears on the front page."""
    text = README.read_text(encoding="utf-8")
    tools = [p for p in sorted((ROOT / "tools").glob("*.py")) if p.name != "__init__.py"]
    missing = [f"tools/{p.name}" for p in tools if f"tools/{p.name}" not in text]
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    missing += [f"make {t}" for t in phony if not re.search(rf"`make {re.escape(t)}`", text)]
    assert not missing, f"README.md's command table lacks: {', '.join(missing)}"


def test_a_wrong_option_file_or_key_in_a_shown_command_is_caught(tmp_path):
    """Continued lines are joined, comments dropped; each kind of mistake fails the check, naming it."""
    for line, message in [
        ("python inference.py --ckpt runs/x/best.pt --ttaa  # --not-this", "inference.py takes no option --ttaa"),
        ("python train.py -c configs/segmentation/nope.yaml", "no file configs/segmentation/nope.yaml"),
        ("python tools/nope.py --help", "no script tools/nope.py"),
        ("python train.py -c configs/segmentation/demo_unet.yaml \\\n    --train.lrr=3e-4", "unknown key 'train.lrr'"),
    ]:
        page = tmp_path / "p.md"
        page.write_text(f"```bash\n{line}\n```\n")
        with pytest.raises(Exception, match=re.escape(message)):
            test_every_command_shown_names_what_exists(page)
