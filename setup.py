"""Build script for needle's C++ extension (metadata lives in pyproject.toml).

Builds ``needle.backend_ndarray.ndarray_backend_cpu`` from ``backends/cpu/*.cc``
with pybind11.  The build is portable: the code is compiled for x86-64-v2 (on x86;
the compiler's default elsewhere), and the vector kernels once more per instruction set
(``kernels_avx2.cc`` with AVX2 + FMA, ``kernels_avx512.cc`` with AVX-512), picked at
import by what the CPU has (``backends/cpu/dispatch.cc``; ``NEEDLE_CPU_ISA`` overrides).
``NEEDLE_NATIVE=1`` compiles everything with ``-march=native`` instead (not portable).
Compiler flags are probed, so a compiler without one of them, or without glibc's libmvec,
still builds (slower) code.  BLAS is not linked here: the module dlopen()s
scipy-openblas32 at import time.

``pip install -e .`` builds the extension in place (inside needle/backend_ndarray/)
so that running from the checkout works; ``python setup.py build_ext --inplace``
does the same by hand.

The CUDA device module ``needle.backend_ndarray.ndarray_backend_cuda`` is built
from ``backends/cuda/*.cu`` when nvcc is found (``$CUDA_HOME/bin`` or PATH) and
``NEEDLE_NO_CUDA`` is not ``1``: nvcc compiles the .cu, the C++ compiler links it
against the static cudart (so the module imports without a GPU or driver).
``NEEDLE_CUDA_ARCHS`` (e.g. ``80,90``) picks the GPU architectures.  A failed CUDA
build only prints a warning: the cpu module is built either way.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
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

# The kernel units built once per instruction set: (macro telling dispatch.cc it is built,
# flags added to the baseline's).  A unit whose flags the compiler rejects is left out.
ISA_UNITS = {
    "kernels_avx2.cc": ("NEEDLE_KERNELS_AVX2", ["-mavx2", "-mfma"]),
    "kernels_avx512.cc": ("NEEDLE_KERNELS_AVX512",
                          ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"]),
}


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------
CUDA_SOURCES = sorted(glob.glob(os.path.join("backends", "cuda", "*.cu")))
CUDA_DEFAULT_ARCHS = ("80", "90")


def _find_nvcc():
    """Path of nvcc ($CUDA_HOME/bin first, then PATH), or None."""
    home = os.environ.get("CUDA_HOME")
    if home:
        path = os.path.join(home, "bin", "nvcc")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("nvcc")


def _cuda_roots(nvcc):
    roots = []
    if os.environ.get("CUDA_HOME"):
        roots.append(os.environ["CUDA_HOME"])
    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    try:  # nvcc may be a wrapper script: ask it where its toolkit is
        with tempfile.TemporaryDirectory() as tmp:  # a dry run prints its variables, TOP among them
            out = subprocess.run([nvcc, "-dryrun", "-c", "probe.cu", "-o", "probe.o"], capture_output=True, text=True,
                                 timeout=60, cwd=tmp)
        for line in (out.stdout + out.stderr).splitlines():
            m = re.match(r"#\$ TOP=(.*)$", line.strip())
            if m:
                roots.append(os.path.normpath(m.group(1).strip()))
    except Exception:
        pass
    roots.append("/usr/local/cuda")
    return roots


def _cudart_static_dir(nvcc):
    for root in _cuda_roots(nvcc):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                    os.path.join("targets", "sbsa-linux", "lib")):
            d = os.path.join(root, sub)
            if os.path.isfile(os.path.join(d, "libcudart_static.a")):
                return d
    return None


def _gencode_flags():
    archs = [a.strip() for a in os.environ.get("NEEDLE_CUDA_ARCHS", ",".join(CUDA_DEFAULT_ARCHS)).split(",")
             if a.strip()]
    flags = []
    for i, a in enumerate(archs):
        code = f"[sm_{a},compute_{a}]" if i == len(archs) - 1 else f"sm_{a}"  # PTX of the newest for JIT
        flags += ["-gencode", f"arch=compute_{a},code={code}"]
    return flags


class CUDAExtension(Extension):
    """An extension compiled by nvcc (see NeedleBuildExt._build_cuda)."""

    def __init__(self, name, sources, nvcc, **kw):
        super().__init__(name, sources=sources, **kw)
        self.nvcc = nvcc


class NeedleBuildExt(build_ext):
    """build_ext that probes optional flags; always in place for editable installs."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False):
            self.inplace = True

    def build_extension(self, ext):
        if not isinstance(ext, CUDAExtension):
            return super().build_extension(ext)
        try:
            self._build_cuda(ext)
        except Exception as e:  # the CUDA module is optional: never fail the install for it
            stale = self.get_ext_fullpath(ext.name)
            if os.path.exists(stale):  # do not install an old build of it (ext.optional: no copy)
                os.remove(stale)
            print(f"needle: WARNING: building the CUDA extension failed ({e}); it was not (re)built",
                  file=sys.stderr)

    def _build_cuda(self, ext):
        try:
            from setuptools.modified import newer_group
        except ImportError:
            from setuptools.dep_util import newer_group

        ext_path = self.get_ext_fullpath(ext.name)
        depends = list(ext.sources) + list(ext.depends)
        if not (self.force or newer_group(depends, ext_path, "newer")):
            self.announce(f"skipping '{ext.name}' CUDA extension (up-to-date)", level=2)
            return
        lib_dir = _cudart_static_dir(ext.nvcc)
        if lib_dir is None:
            raise RuntimeError(f"libcudart_static.a not found next to {ext.nvcc} (set CUDA_HOME)")
        includes = [_pybind11_include(), sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]]
        includes += list(self.include_dirs or []) + list(ext.include_dirs)
        tmp = os.path.join(self.build_temp, "cuda")
        os.makedirs(tmp, exist_ok=True)
        os.makedirs(os.path.dirname(ext_path) or ".", exist_ok=True)
        objects = []
        for src in ext.sources:
            obj = os.path.join(tmp, os.path.splitext(os.path.basename(src))[0] + ".o")
            cmd = [ext.nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "-Xcompiler", "-fvisibility=hidden", *_gencode_flags()]
            for inc in dict.fromkeys(os.fspath(i) for i in includes):
                cmd += ["-I", inc]
            self.announce("needle: " + " ".join(cmd), level=2)
            subprocess.run(cmd, check=True)
            objects.append(obj)
        self.compiler.link_shared_object(
            objects, ext_path, libraries=["cudart_static", "dl", "rt", "pthread"], library_dirs=[lib_dir],
            extra_postargs=["-pthread"], target_lang="c++")

    def build_extensions(self):
        cc = self.compiler
        # setuptools' unix compiler may carry -g/-O2 from Python's config; ours come later and win.
        compile_args = ["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-pthread"]
        link_args = ["-pthread"]
        if os.environ.get("NEEDLE_NATIVE") == "1" and _probe(cc, _MAIN, ["-march=native"]):
            compile_args.append("-march=native")
        elif _probe(cc, _MAIN, ["-march=x86-64-v2"]):
            compile_args.append("-march=x86-64-v2")
        unit_flags = {unit: flags for unit, (_, flags) in ISA_UNITS.items() if _probe(cc, _MAIN, flags)}
        compile_args += ["-D%s=1" % ISA_UNITS[unit][0] for unit in unit_flags]
        if "kernels_avx2.cc" in unit_flags and _probe(cc, _MVEC, unit_flags["kernels_avx2.cc"], ["-lmvec"]):
            compile_args.append("-DNEEDLE_HAVE_LIBMVEC=1")  # called only by the AVX2 and AVX-512 units
            link_args.append("-lmvec")
        for ext in self.extensions:
            if isinstance(ext, CUDAExtension):
                continue
            ext.sources = [s for s in ext.sources
                           if os.path.basename(s) not in ISA_UNITS or os.path.basename(s) in unit_flags]
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
        self.announce("needle: compile flags %s, per unit %s, link flags %s" % (compile_args, unit_flags, link_args),
                      level=2)
        self._add_unit_flags(unit_flags)
        self._parallel_compile()
        super().build_extensions()

    def _add_unit_flags(self, unit_flags):
        """Compile each kernel unit of ISA_UNITS with its instruction set's flags."""
        cc = self.compiler
        compile_one = cc._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            flags = unit_flags.get(os.path.basename(src), [])
            return compile_one(obj, src, ext, cc_args, list(extra_postargs) + flags, pp_opts)

        cc._compile = _compile

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
        depends=sorted(glob.glob(os.path.join("backends", "cpu", "*.h"))
                       + glob.glob(os.path.join("backends", "cpu", "*.inc"))
                       + glob.glob(os.path.join("backends", "common", "*.h"))),
        language="c++",
    )
]

_nvcc = None if os.environ.get("NEEDLE_NO_CUDA") == "1" else _find_nvcc()
if _nvcc and CUDA_SOURCES:
    ext_modules.append(
        CUDAExtension(
            "needle.backend_ndarray.ndarray_backend_cuda",
            sources=CUDA_SOURCES,
            nvcc=_nvcc,
            include_dirs=[os.path.join("backends", "cuda")],
            depends=sorted(glob.glob(os.path.join("backends", "cuda", "*.h"))
                           + glob.glob(os.path.join("backends", "common", "*.h"))),
            language="c++",
            optional=True,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": NeedleBuildExt})
