"""Builds the C++ core without Python and runs its ctest program."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_core_ctest(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.fail("cmake and ctest are needed to build the C++ core tests (pip install cmake)")
    build = tmp_path_factory.mktemp("ctest-build")
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(build), "-DSADI_BUILD_PYTHON=OFF", "-DSADI_BUILD_TESTS=ON",
        f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release",
    ]
    for cmd in (configure, ["cmake", "--build", str(build), "-j", "2"], ["ctest", "--test-dir", str(build), "--output-on-failure"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        if cmd[1] == "--build":  # the core compiles clean under -Wall -Wextra -Wshadow -Wconversion
            assert "warning:" not in res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-3000:]
    assert "100% tests passed" in res.stdout
    # the core target compiles with no Python header on its include path
    flags = (build / "CMakeFiles" / "sadi_core.dir" / "flags.make").read_text()
    python_include = sysconfig.get_paths()["include"]
    assert python_include not in flags and "pybind11" not in flags, flags
    assert "-Wconversion" in flags
