#!/usr/bin/env python3
"""Which kernels' SASS differs between two builds (a variant against its base).

    python3 dev/sass_diff.py A B      A, B: a .so, .a, .o or a wheel (its fusedmoe extension)

Dumps both with cuobjdump --dump-sass (CUDA toolkit, or the copy that ships with Triton), splits
the dump by function, drops instruction addresses and encodings, and prints each function that
differs or exists on one side only, then a count. Exit status 1 when anything differs.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile


def cuobjdump() -> str:
    found = shutil.which("cuobjdump") or next(iter(glob.glob(
        os.path.join(sys.prefix, "lib", "python3*", "site-packages", "triton", "backends",
                     "nvidia", "bin", "cuobjdump"))), None)
    if not found:
        sys.exit("sass_diff: no cuobjdump (CUDA toolkit, or pip install triton)")
    return found


def binary(path: str, scratch: str) -> str:
    if not path.endswith(".whl"):
        return path
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist() if re.search(r"fusedmoe/_ext.*\.so$", n)]
        if not names:
            sys.exit(f"sass_diff: no fusedmoe/_ext*.so in {path}")
        return wheel.extract(names[0], scratch)


def functions(path: str) -> dict:
    dump = subprocess.run([cuobjdump(), "--dump-sass", path], capture_output=True, text=True,
                          check=True).stdout
    out, name = {}, None
    for line in dump.splitlines():
        match = re.search(r"Function : (\S+)", line)
        if match:
            name = match.group(1)
            out[name] = []
            continue
        if name is None or not re.search(r"/\*[0-9a-f]{4,}\*/", line):
            continue  # not an instruction (headers of the next ELF section, labels)
        text = re.sub(r"/\*[0-9a-f]{4,}\*/", "", line)      # addresses
        text = re.sub(r"/\* 0x[0-9a-f]+ \*/", "", text).strip()  # encodings
        if text:
            out[name].append(text)
    return out


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as scratch:
        a = functions(binary(sys.argv[1], os.path.join(scratch, "a")))
        b = functions(binary(sys.argv[2], os.path.join(scratch, "b")))
    demangle = lambda n: subprocess.run(["c++filt", n], capture_output=True,  # noqa: E731
                                        text=True).stdout.strip()[:110]
    differing = 0
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            differing += 1
            side = "only in B" if name not in a else "only in A" if name not in b else \
                f"{len(a[name])} -> {len(b[name])} instructions"
            print(f"differs ({side}): {demangle(name)}")
    print(f"{differing} of {len(set(a) | set(b))} functions differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
