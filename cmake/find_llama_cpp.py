"""Print llama-cpp-python's version, header folder and library folder, one per line.

Run by CMakeLists.txt with the build's Python. It does not import llama_cpp (that would load
its libraries, which can fail on a build machine without the GPU driver they were built for).
"""

import importlib.metadata as metadata
import sys
from pathlib import Path


def main() -> int:
    try:
        dist = metadata.distribution("llama-cpp-python")
    except metadata.PackageNotFoundError:
        print("llama-cpp-python is not installed.", file=sys.stderr)
        return 1
    files = [Path(str(dist.locate_file(f))) for f in dist.files or []]
    headers = [f.parent for f in files if f.name == "llama.h" and f.parent.name == "include"]
    libdirs = [f.parent for f in files if f.name.startswith("libllama.") and f.parent.parent.name == "llama_cpp"]
    if not headers or not libdirs:
        print("llama-cpp-python is installed without its headers or llama_cpp/lib.", file=sys.stderr)
        return 1
    print(f"{dist.version};{headers[0]};{libdirs[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
