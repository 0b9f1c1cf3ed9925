"""The repository stands alone (issue 13): scripts/check_docs.py finds no file that points outside
it, no path to a missing Markdown file, no dead relative link and no citation of a missing
section; and the checker itself catches each of those on a small repository made to break them.

Needs git and nothing else (no GPU, no torch of its own)."""

import importlib.util
import os
import shutil
import subprocess

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def load_checker():
    spec = importlib.util.spec_from_file_location(
        "check_docs", os.path.join(REPO_ROOT, "scripts", "check_docs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_git_checkout(path):
    result = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel"],
                            capture_output=True, text=True)
    return result.returncode == 0 and os.path.samefile(result.stdout.strip(), path)


def test_repository_stands_alone():
    if not is_git_checkout(REPO_ROOT):
        pytest.skip("not a git checkout: the file list comes from git")
    checker = load_checker()
    problems = checker.check(REPO_ROOT)
    assert problems == [], "files point outside the repository or to nothing:\n" + "\n".join(
        problems)


def write(root, path, text):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)


def fixture_text(text):
    """Fixture files are written with '%' for '.md' and '^' for a double quote, so that this file
    itself names no missing Markdown file and cites no missing section."""
    return text.replace("%", ".md").replace("^", '"')


def test_checker_catches_each_kind_of_problem(tmp_path):
    root = str(tmp_path)
    subprocess.run(["git", "init", "-q", root], check=True)
    outside = "../" + "shared"
    work = "/" + "work/"
    files = {
        "docs/SPEC%": "# Contract\n\n## Routing methods\n\ntext\n",
        "docs/DESIGN%": "# Design\n\n## Numerics\n",
        "README%": (
            "# Title\n\n"
            "[good](docs/SPEC%), [anchor](docs/SPEC%#routing-methods), [web](https://x.org/a%)\n"
            "[dead](docs/MISSING%)\n"
            "[dead anchor](docs/SPEC%#no-such-heading)\n"
            "[self](#title) and [bad self](#nothing)\n"
            f"[outside]({outside}/SPEC%)\n"
            "```\n[in a code block](not/checked.txt)\n```\n"),
        "src/a.cc": (
            "// SPEC ^Routing methods^ and DESIGN ^Numerics^ exist; SPEC ^Nonexistent^ does not.\n"
            f"// see {work}x\n"
            "// the benchmark of BENCH%; docs/SPEC% exists; ../docs/DESIGN% resolves\n"
            "// docs/DESIGN% ^Numerics^ fine, docs/DESIGN% ^Routing^ not\n"),
        "build/ignored.txt": "BENCH%\n",
        "dev/change.patch": "--- a/docs/SPEC%\n+++ b/docs/SPEC%\n--- a/docs/GONE%\n",
        ".gitignore": "build/\n",
    }
    for path, text in files.items():
        write(root, fixture_text(path), fixture_text(text))

    problems = load_checker().check(root)
    text = "\n".join(problems)

    def has(path_line, words):
        return any(p.startswith(fixture_text(path_line) + ":") and fixture_text(words) in p
                   for p in problems)

    expected = [
        ("README%:4", "link to docs/MISSING%: no such file"),
        ("README%:4", "names docs/MISSING%, which is not"),
        ("README%:5", "has no heading with anchor #no-such-heading"),
        ("README%:6", "has no heading with anchor #nothing"),
        ("README%:7", f"mentions '{outside}'"),
        ("README%:7", f"names {outside}/SPEC%, which is not"),
        ("README%:7", f"link to {outside}/SPEC%: no such file"),
        ("src/a.cc:1", "cites SPEC ^Nonexistent^"),
        ("src/a.cc:2", f"mentions '{work}'"),
        ("src/a.cc:3", "names BENCH%, which is not"),
        ("src/a.cc:4", "cites docs/DESIGN% ^Routing^"),
        ("dev/change.patch:3", "names a/docs/GONE%, which is not"),
    ]
    for path_line, words in expected:
        assert has(path_line, words), f"{path_line}: {words} not reported in:\n{text}"
    # And nothing else: the good links, the URL, the code block, the sections that exist, the
    # relative path that resolves, a diff's a/ and b/ names of a file that exists and the ignored
    # file pass.
    assert len(problems) == len(expected), text
