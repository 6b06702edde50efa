"""One program run eagerly and compiled, compared, and its outcome classified."""
from __future__ import annotations

import dataclasses
import linecache
import re
import time
import traceback
from typing import Callable, Optional

import numpy as np

import needle as ndl
import needle.nn as nn

from .compare import compare, perturb, rounding_noise, watching_ties
from .generate import generate

#: outcome categories; everything but "ok" is a finding
CATEGORIES = ("ok", "mismatch", "compiled-error", "crash", "timeout")
PERTURBED_RUNS = 2  # perturbed eager runs per call: the noise estimate


@dataclasses.dataclass
class Result:
    """The outcome of one program: its category (see CATEGORIES), a description, its source."""

    seed: int
    category: str
    detail: str = ""
    source: str = ""
    eager_error: str = ""  # the exception eager raised (the compiled one matched it)
    seconds: float = 0.0


def _draw(inputs: dict, rng: np.random.Generator) -> list[np.ndarray]:
    """One array per input: normal floats (a quarter NaN/+-Inf for "nonfinite"), or ids."""
    arrays = []
    for shape, kind, _ in inputs.values():
        if kind.startswith("ids:"):
            a = rng.integers(0, int(kind[4:]), size=shape).astype(np.float32)
        else:
            a = rng.standard_normal(shape).astype(np.float32)
            if kind == "nonfinite":
                mask = rng.random(shape) < 0.25
                a[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), size=shape)[mask]
        arrays.append(a)
    return arrays


class _Harness:
    """One exec'd program, its Parameters, and how to call it on numpy inputs."""

    def __init__(self, source: str, seed: int):
        filename = f"<fuzz-{seed}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        np.random.seed(seed % 2**32)  # parameter initialisation
        self.ns: dict = {}
        exec(compile(source, filename, "exec"), self.ns)  # noqa: S102 (generated program)
        self.inputs: dict = self.ns["INPUTS"]
        self.params: list = []
        self.labels: list[str] = []
        for name, value in list(self.ns.items()):
            found = [value] if isinstance(value, nn.Parameter) else (
                value.parameters() if isinstance(value, nn.Module) else [])
            for i, p in enumerate(found):
                if all(p is not q for q in self.params):
                    self.params.append(p)
                    self.labels.append(name if isinstance(value, nn.Parameter) else f"{name}.parameters()[{i}]")

    def rebind(self, rng: np.random.Generator) -> None:
        """New values for the program's global Tensors (c0, ...) and floats (s0, ...)."""
        for name, value in self.ns.items():
            if re.fullmatch(r"c\d+", name):
                self.ns[name] = ndl.Tensor(rng.standard_normal(value.shape).astype(np.float32),
                                                dtype="float32", requires_grad=False)
            elif re.fullmatch(r"s\d+", name):
                self.ns[name] = float(rng.choice([0.5, 2.0, -1.5, 3.0]))

    def set_params(self, arrays: list[np.ndarray]) -> None:
        for p, a in zip(self.params, arrays):
            p.data = ndl.Tensor(a, dtype="float32", requires_grad=False)

    def call(self, fn: Callable, arrays: list[np.ndarray]) -> list[Optional[np.ndarray]]:
        """fn's outputs and then every Parameter's gradient (None where there is none)."""
        args = [ndl.Tensor(a, dtype="float32", requires_grad=grad)
                for a, (_, _, grad) in zip(arrays, self.inputs.values())]
        for p in self.params:
            p.grad = None
        out = fn(*args)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        grads = [p.grad for p in self.params]
        return [None if t is None else np.asarray(t.numpy()) for t in outs + grads]

    def label(self, i: int, n_outputs: int) -> str:
        return f"output {i}" if i < n_outputs else f"{self.labels[i - n_outputs]}.grad"


def _exception(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def run_source(source: str, seed: int = 0) -> Result:
    """Run one program eagerly and compiled (three calls) and classify the outcome."""
    start = time.perf_counter()
    h = _Harness(source, seed)
    result = Result(seed, "ok", source=source)
    rng, noise = (np.random.default_rng([seed % 2**32, k]) for k in (0, 1))  # data, perturbations
    params0 = [p.numpy() for p in h.params]
    param_sets = [params0, params0, [rng.standard_normal(a.shape).astype(np.float32) for a in params0]]
    compiled = ndl.compile(h.ns["program"])
    for call, params in enumerate(param_sets):
        arrays = _draw(h.inputs, rng)
        if call == 2:
            h.rebind(rng)
        h.set_params(params)
        ties: list = []
        try:
            with watching_ties(ties):
                expected = h.call(h.ns["program"], arrays)
        except Exception as e:  # noqa: BLE001 (an invalid program: compiled must raise alike)
            try:
                h.call(compiled, arrays)
            except Exception as c:  # noqa: BLE001
                if not isinstance(c, type(e)):  # a subclass still meets the caller's `except`
                    result.category = "compiled-error"
                    result.detail = f"eager raised {_exception(e)}; compiled raised {_exception(c)}"
                else:
                    result.eager_error = _exception(e)
            else:
                result.category, result.detail = "mismatch", f"eager raised {_exception(e)}; compiled returned"
            break
        perturbed = []
        for _ in range(PERTURBED_RUNS):
            h.set_params([perturb(a, noise) for a in params])
            try:
                with rounding_noise(noise):
                    perturbed.append(h.call(h.ns["program"], [a if k.startswith("ids:") else perturb(a, noise)
                                                              for a, (_, k, _) in zip(arrays, h.inputs.values())]))
            except Exception:  # noqa: BLE001 (no noise estimate from this run)
                pass
        h.set_params(params)
        try:
            got = h.call(compiled, arrays)
        except Exception:  # noqa: BLE001
            result.category, result.detail = "compiled-error", traceback.format_exc(limit=-4)
            break
        n_out = len(expected) - len(h.params)
        if len(got) != len(expected):
            result.category, result.detail = "mismatch", f"compiled returned {len(got)} values, eager {len(expected)}"
            break
        for i, (e, g) in enumerate(zip(expected, got)):
            why = compare(h.label(i, n_out), e, g, [p[i] for p in perturbed if len(p) == len(expected)])
            if why:
                result.category, result.detail = "mismatch", f"call {call + 1}: {why}"
                if ties:  # rounding decided a comparison: not a finding
                    result.category, result.detail = "ok", f"near tie at a comparison ({ties[0]}): {why}"
                break
        if result.category != "ok":
            break
    result.seconds = time.perf_counter() - start
    return result


def run_seed(seed: int) -> Result:
    """Generate and run the program of `seed`; an exception of the harness itself is a finding."""
    source = generate(seed)
    try:
        return run_source(source, seed)
    except Exception:  # noqa: BLE001
        return Result(seed, "compiled-error", "harness: " + traceback.format_exc(limit=-3), source)


def failure_class(result: Result) -> str:
    """The category and the message's last line with numbers and names abstracted away."""
    lines = [line for line in result.detail.strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    text = re.sub(r" ?\[input shapes [^]]*\]| ?\(at <fuzz-\d+>:\d+\)", "", text)
    text = re.sub(r"<fuzz-\d+>:\d+", "<line>", text)
    text = re.sub(r"\b[vxpmecs]\d+\b", "<var>", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return f"{result.category}: {text[:160]}"
