"""Build script for needle's C++ extension (metadata lives in pyproject.toml).

Builds ``needle.backend_ndarray.ndarray_backend_cpu`` from ``backends/cpu/*.cc``
with pybind11.  Compiler flags are probed, so a compiler without OpenMP,
``-march=native`` or glibc's libmvec still builds (slower) code.  BLAS is not
linked here: the module dlopen()s scipy-openblas32 at import time.

``pip install -e .`` builds the extension in place (inside needle/backend_ndarray/)
so that running from the checkout works; ``python setup.py build_ext --inplace``
does the same by hand.
"""
import glob
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _pybind11_include():
    import pybind11

    return pybind11.get_include()


def _probe(compiler, source, compile_args=(), link_args=()):
    """True if `source` compiles and links with the given flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cc")
        with open(src, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(compile_args))
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=list(link_args))
        except Exception:
            return False
    return True


_MAIN = "int main() { return 0; }\n"
_MVEC = """
#include <immintrin.h>
extern "C" __m256 _ZGVdN8v_expf(__m256);
extern "C" __m256 _ZGVdN8v_logf(__m256);
extern "C" __m256 _ZGVdN8v_tanhf(__m256);
int main() {
  __m256 x = _mm256_set1_ps(0.5f);
  x = _ZGVdN8v_tanhf(_ZGVdN8v_logf(_ZGVdN8v_expf(x)));
  return _mm256_movemask_ps(x);
}
"""


class NeedleBuildExt(build_ext):
    """build_ext that probes optional flags; always in place for editable installs."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            self.inplace = True

    def build_extensions(self):
        cc = self.compiler
        # setuptools' unix compiler may carry -g/-O2 from Python's config; ours come later and win.
        compile_args = ["-std=c++17", "-O3", "-g0", "-fvisibility=hidden"]
        link_args = []
        if os.environ.get("NEEDLE_NO_NATIVE") != "1" and _probe(cc, _MAIN, ["-march=native"]):
            compile_args.append("-march=native")
        else:
            if _probe(cc, _MAIN, ["-mavx2", "-mfma"]):
                pass  # leave generic: only native builds assume the host's ISA
        compile_args.append("-pthread")
        link_args.append("-pthread")
        if "-march=native" in compile_args and _probe(cc, _MVEC, ["-march=native"], ["-lmvec"]):
            compile_args.append("-DNEEDLE_HAVE_LIBMVEC=1")
            link_args.append("-lmvec")
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
        self.announce("needle: compile flags %s, link flags %s" % (compile_args, link_args), level=2)
        self._parallel_compile()
        super().build_extensions()

    def _parallel_compile(self):
        """Compile the sources of an extension concurrently (one job per core)."""
        cc = self.compiler
        if not all(hasattr(cc, a) for a in ("_setup_compile", "_get_cc_args", "_compile")):
            return
        serial = cc.compile

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                    extra_postargs=None, depends=None):
            try:
                macros, objects, extra_postargs, pp_opts, build = cc._setup_compile(
                    output_dir, macros, include_dirs, sources, depends, extra_postargs)
                cc_args = cc._get_cc_args(pp_opts, debug, extra_preargs)
            except Exception:
                return serial(sources, output_dir, macros, include_dirs, debug, extra_preargs, extra_postargs,
                              depends)

            def one(obj):
                if obj in build:
                    src, ext = build[obj]
                    cc._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
                list(ex.map(one, objects))
            return objects

        cc.compile = compile


class _LazyInclude(os.PathLike):
    """pybind11's include dir, resolved only once the build requirements are installed."""

    def __fspath__(self):
        return _pybind11_include()

    def __str__(self):
        return _pybind11_include()


sources = sorted(glob.glob(os.path.join("backends", "cpu", "*.cc")))

ext_modules = [
    Extension(
        "needle.backend_ndarray.ndarray_backend_cpu",
        sources=sources,
        include_dirs=[_LazyInclude(), os.path.join("backends", "cpu")],
        depends=sorted(glob.glob(os.path.join("backends", "cpu", "*.h"))),
        language="c++",
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": NeedleBuildExt})
