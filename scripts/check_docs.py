#!/usr/bin/env python3
"""Checks that the repository stands alone: no file points outside it (issue 13).

Over every file git knows (tracked, plus untracked files that are not ignored), it reports:
1. a mention of a path outside the repository: the parent folder's shared notes or an absolute
   path under the machine's work folder (the exact strings are FORBIDDEN below);
2. a path to a Markdown file that is not in the repository (a word like `docs/SPEC.md` or
   `bench/NOTES.md`, read relative to the mentioning file's folder or to the repository root; in
   a `.patch` or `.diff` file, git's `a/` and `b/` prefixes are dropped first);
3. in Markdown files, a relative link (`[text](target)`, `[label]: target`) whose target file or
   `#anchor` heading does not exist;
4. a section citation whose heading does not exist: `SPEC "Routing methods"`, `DESIGN "Numerics"`
   and `STYLE "Tests"` name headings of docs/SPEC.md, docs/DESIGN.md and docs/STYLE.md, and
   `<path>.md "Heading"` a heading of that file (a heading that starts with the cited words).

Needs only Python 3 and git. Usage: python3 scripts/check_docs.py [REPO_ROOT]; prints one line per
problem and exits 1 when there is any. tests/python/test_docs.py runs it under pytest (CI).
"""

import os
import re
import subprocess
import sys

# Written in two pieces so that this file does not trip its own check.
FORBIDDEN = ("../" + "shared", "/" + "work/")

# Bare names that cite a document of docs/ by its short name.
SHORT_NAMES = {"SPEC": "docs/SPEC.md", "DESIGN": "docs/DESIGN.md", "STYLE": "docs/STYLE.md"}

URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
MD_PATH = re.compile(r"(?<![\w./-])[\w./-]*\w\.md(?![\w/])")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
CITATION = re.compile(r"(?<![\w./-])([\w./-]*\w\.md|SPEC|DESIGN|STYLE)(?:'s)? \"([^\"\n]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def repository_files(root):
    """Paths (relative, '/'-separated) of the files git lists: tracked plus untracked not ignored."""
    out = subprocess.run(
        ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True).stdout
    paths = sorted({p.decode() for p in out.split(b"\0") if p})
    return [p for p in paths if os.path.isfile(os.path.join(root, p))]


def read_text(root, path):
    """The file's text, or None for a binary file (a NUL byte in its first 8 KiB)."""
    with open(os.path.join(root, path), "rb") as f:
        data = f.read()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def prose_lines(text):
    """(line number, line) of a Markdown text outside fenced code blocks."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


class Repository:
    def __init__(self, root):
        self.root = root
        self.files = repository_files(root)
        self.file_set = set(self.files)
        self.dirs = {os.path.dirname(p) for p in self.files}
        for d in list(self.dirs):
            while d:
                d = os.path.dirname(d)
                self.dirs.add(d)
        self._texts = {}
        self._headings = {}

    def text(self, path):
        if path not in self._texts:
            self._texts[path] = read_text(self.root, path)
        return self._texts[path]

    def headings(self, path):
        """(titles, anchors) of a Markdown file of the repository."""
        if path not in self._headings:
            titles, anchors, seen = [], set(), {}
            for _, line in prose_lines(self.text(path) or ""):
                m = HEADING.match(line)
                if not m:
                    continue
                titles.append(m.group(2))
                anchor = slug(m.group(2))
                count = seen.get(anchor, 0)
                seen[anchor] = count + 1
                anchors.add(anchor if count == 0 else f"{anchor}-{count}")
            self._headings[path] = (titles, anchors)
        return self._headings[path]

    def resolve(self, source, target, root_too=True):
        """The repository path that `target`, written in file `source`, names; None if none.

        Relative to the source's folder, then (root_too) to the repository root."""
        if target.startswith("/"):
            return None
        bases = [os.path.dirname(source)] + ([""] if root_too else [])
        for base in bases:
            path = os.path.normpath(os.path.join(base, target)).replace(os.sep, "/")
            if path.startswith("../") or path == "..":
                continue
            if path == ".":
                path = ""
            if path in self.file_set or path in self.dirs:
                return path
        return None


def check_file(repo, path):
    """Problems of one file, as 'path:line: message' strings."""
    text = repo.text(path)
    if text is None:
        return []
    problems = []
    lines = text.splitlines()
    is_markdown = path.endswith(".md")
    is_diff = path.endswith((".patch", ".diff"))

    for number, line in enumerate(lines, 1):
        for bad in FORBIDDEN:
            if bad in line:
                problems.append(f"{path}:{number}: mentions '{bad}', a path outside the repository")
        plain = URL.sub(" ", line)
        for m in MD_PATH.finditer(plain):
            named = m.group(0)
            if is_diff and named[:2] in ("a/", "b/"):
                named = named[2:]  # git's prefixes of the old and new file in a diff
            if repo.resolve(path, named) is None:
                problems.append(f"{path}:{number}: names {m.group(0)}, which is not a file of the "
                                "repository")
        for m in CITATION.finditer(plain):
            doc, section = m.group(1), m.group(2)
            target = SHORT_NAMES.get(doc) or repo.resolve(path, doc)
            if target is None or target not in repo.file_set:
                if doc in SHORT_NAMES:
                    problems.append(f"{path}:{number}: cites {doc} \"{section}\", but {target} "
                                    "is not in the repository")
                continue  # an unknown .md path is reported above
            titles, _ = repo.headings(target)
            wanted = " ".join(section.lower().split())
            if not any(" ".join(t.lower().split()).startswith(wanted) for t in titles):
                problems.append(f"{path}:{number}: cites {doc} \"{section}\", but {target} has no "
                                "such heading")

    if is_markdown:
        for number, line in prose_lines(text):
            targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
            ref = REFERENCE_LINK.match(line)
            if ref:
                targets.append(ref.group(1))
            for target in targets:
                if SCHEME.match(target):
                    continue
                file_part, _, anchor = target.partition("#")
                if file_part:
                    resolved = repo.resolve(path, file_part, root_too=False)
                    if resolved is None:
                        problems.append(f"{path}:{number}: link to {target}: no such file in the "
                                        "repository")
                        continue
                else:
                    resolved = path
                if anchor and resolved.endswith(".md") and resolved in repo.file_set:
                    if anchor.lower() not in repo.headings(resolved)[1]:
                        problems.append(f"{path}:{number}: link to {target}: {resolved} has no "
                                        f"heading with anchor #{anchor}")
    return problems


def check(root):
    """Every problem of the repository at `root` (an empty list when it stands alone)."""
    repo = Repository(root)
    problems = []
    for path in repo.files:
        problems.extend(check_file(repo, path))
    return problems


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..")
    problems = check(os.path.abspath(root))
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_docs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("check_docs: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
