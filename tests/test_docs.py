"""The README and docs/ stay true: links resolve, commands compose, code runs, tables list every choice."""

import re
import shlex
from pathlib import Path

import pytest

from hydra_helpers import CONF, ROOT, compose_config

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
HYDRA_SCRIPTS = {"train.py": "train", "eval.py": "eval", "export.py": "export"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor and file.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
            assert anchor in anchors, f"{page.name}: no heading for #{anchor} in {file.name}"


def commands(page: Path) -> list[str]:
    """``python src/...`` commands of a page: in its bash blocks (continuations joined, comments dropped) and in
    inline code."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if re.search(r"python.*src/\w+\.py", line):
                found.append(line[line.index("src/"):])
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [c[c.index("src/"):] for c in re.findall(r"`([^`]*python[^`]*src/\w+\.py[^`]*)`", inline)]
    return [re.sub(r"<[^>]*>", "x", command) for command in found]  # placeholders made concrete


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_composes(page, tmp_path):
    for command in commands(page):
        script, *args = shlex.split(command)
        script = Path(script).name
        if script in HYDRA_SCRIPTS:
            # a placeholder standing alone stands for overrides ("<the run's overrides>")
            overrides = [a for a in args if a not in ("-m", "--multirun", "x") and "${" not in a]
            overrides = [a.split(",")[0] if "=" in a and "[" not in a else a for a in overrides]  # one sweep point
            compose_config(overrides, tmp_path, name=HYDRA_SCRIPTS[script])  # what --cfg job shows, or an error
        else:
            assert (ROOT / "src" / script).is_file(), f"{page.name}: {command}"
            source = (ROOT / "src" / script).read_text()
            for option in (a.split("=")[0] for a in args if a.startswith("--")):
                assert f'"{option}"' in source, f"{page.name}: {script} has no option {option}"


def test_the_python_snippets_in_the_docs_run():
    snippets = [(page, code) for page in PAGES for code in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]
    assert snippets
    for page, code in snippets:
        exec(compile(code, str(page), "exec"), {})


def test_the_training_page_lists_every_choice_of_every_group():
    page = (ROOT / "docs" / "training.md").read_text()
    table = page[page.index("| group | choices |"):]
    table = table[:table.index("\n\n")]
    for group in ("model", "data", "trainer", "adalr", "logger", "debug", "experiment", "sweep"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{group}`"))
        for choice in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            assert f"`{choice}`" in row, f"{group}={choice} is missing from docs/training.md's table"


def test_the_docs_speak_of_the_project_only():
    words = re.compile(r"\b(sess[i]ons?|lent|this\s+machine|quiet\s+machine|new\s+user)\b", re.I)
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not words.search(line), f"{page.name}:{number}: {line}"
