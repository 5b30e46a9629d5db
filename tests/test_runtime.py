"""The extension shares llama_cpp's libraries: one ggml in the process."""

import subprocess
import sys
import textwrap


def test_one_libggml_base_is_mapped(tiny_path, tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, sadi_cpp
        from llama_cpp import Llama
        hook = sadi_cpp.attach(Llama(model_path={str(tiny_path)!r}, n_ctx=64, verbose=False))
        m = np.zeros((3, 4), bool); m[0, 0] = True
        with hook.steering({{"head": m}}, delta=1.0):
            hook.llm.eval([1, 4, 5])
        paths = set()
        for line in open("/proc/self/maps"):
            parts = line.split()
            if len(parts) >= 6 and "libggml-base" in parts[5]:
                paths.add(__import__("os").path.realpath(parts[5]))
        print("\\n".join(sorted(paths)))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    mapped = res.stdout.split()
    assert len(mapped) == 1, mapped
    assert "/llama_cpp/lib/" in mapped[0]


def test_core_links_llama_cpps_own_libllama():
    from sadi_cpp import _core

    out = subprocess.run(["ldd", _core.__file__], capture_output=True, text=True).stdout
    libllama = [line for line in out.splitlines() if "libllama" in line]
    assert libllama and "/llama_cpp/lib/" in libllama[0], out
