"""needle-ir: runs a script, prints the IR of every graph it compiled (tools/needle_ir.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from needle.ir import parse_graph
from needle.cli.needle_ir import main, pass_names

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = re.compile(r"^# needle-ir: (\S+) (\(.*\)) after (\S+)$", re.M)

SCRIPT = """
import sys
import numpy as np
import needle as ndl
import needle.nn as nn

np.random.seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
loss_fn = nn.SoftmaxLoss()


@ndl.compile
def forward(x):
    return model(x)


def make_step():
    @ndl.compile
    def loss_and_grads(x, y):
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    return loss_and_grads


x = ndl.Tensor(np.random.randn(6, 4).astype("float32"))
y = ndl.Tensor(np.array([0, 1, 2, 0, 1, 2]))
print("SCRIPT-OUTPUT", sys.argv[1:])
forward(x)
forward(x)                     # same signature: one graph
step = make_step()
step(x, y)
{tail}
"""


def write(tmp_path, tail="", name="train_tiny.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(SCRIPT).replace("{tail}", tail))
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def chunks(out):
    """[(qualname, signature, pass, body)] split on the header lines."""
    heads = list(HEADER.finditer(out))
    assert heads and out.startswith(heads[0].group(0)), out[:200]
    return [(m.group(1), m.group(2), m.group(3), out[m.end() + 1:nxt.start() if nxt else len(out)])
            for m, nxt in zip(heads, heads[1:] + [None])]


def test_default_prints_each_graph_once_after_the_last_pass(tmp_path, capsys):
    script = write(tmp_path)
    code, out, err = run(capsys, script, "--flag", "value")
    assert code == 0, err
    # the script's own output went to stderr, with its arguments in sys.argv
    assert "SCRIPT-OUTPUT ['--flag', 'value']" in err and "SCRIPT-OUTPUT" not in out
    parts = chunks(out)
    assert [(q, s) for q, s, _, _ in parts] == [
        ("forward", "(float32[6,4])"),
        ("make_step.<locals>.loss_and_grads", "(float32[6,4], " + parts[1][1].split(", ")[1]),
    ]
    passes = {p for _, _, p, _ in parts}
    assert len(passes) == 1 and passes < set(pass_names()) - {"input"}
    for _, _, _, body in parts:
        graph = parse_graph(body)  # the printed IR parses back
        assert graph.nodes
        assert f"# {script}:" in body  # node lines carry the script's file:line
        assert "grad(" not in body  # the autodiff pass expanded the request


def test_after_input_shows_the_grad_request(tmp_path, capsys):
    script = write(tmp_path)
    code, out, err = run(capsys, "--after", "input", script)
    assert code == 0, err
    parts = chunks(out)
    assert all(p == "input" for _, _, p, _ in parts)
    (body,) = [b for q, _, _, b in parts if q.endswith("loss_and_grads")]
    assert "= grad(" in body
    assert parse_graph(body).name.endswith("loss_and_grads")


def test_all_prints_every_stage_in_order(tmp_path, capsys):
    script = write(tmp_path)
    code, out, err = run(capsys, "--all", "--function", "loss_and_grads", script)
    assert code == 0, err
    stages = [p for _, _, p, _ in chunks(out)]
    assert stages[0] == "input"
    expected = [n for n in pass_names() if n in stages]
    assert stages == expected and len(stages) >= 2
    assert "autodiff" in stages
    for _, _, _, body in chunks(out):
        parse_graph(body)


def test_function_filter_matches_qualname_or_last_component(tmp_path, capsys):
    script = write(tmp_path)
    _, out, _ = run(capsys, "--function", "loss_and_grads", script)
    assert [q for q, _, _, _ in chunks(out)] == ["make_step.<locals>.loss_and_grads"]
    _, out, _ = run(capsys, "--function", "make_step.<locals>.loss_and_grads", script)
    assert [q for q, _, _, _ in chunks(out)] == ["make_step.<locals>.loss_and_grads"]
    _, out, _ = run(capsys, "--function", "forward", script)
    assert [q for q, _, _, _ in chunks(out)] == ["forward"]
    code, out, err = run(capsys, "--function", "nothing", script)
    assert code == 1 and out == "" and "forward" in err


def test_format_dot(tmp_path, capsys):
    script = write(tmp_path)
    code, out, err = run(capsys, "--format", "dot", script)
    assert code == 0, err
    parts = chunks(out)
    assert len(parts) == 2
    for _, _, _, body in parts:
        assert body.startswith("digraph ") and body.rstrip().endswith("}")


def test_list_passes(capsys):
    code, out, _ = run(capsys, "--list-passes")
    names = out.split()
    assert code == 0 and names[0] == "input" and "autodiff" in names and "simplify" in names
    assert names == pass_names()


def test_unknown_pass_exits_2_and_lists_the_valid_names(tmp_path, capsys):
    script = write(tmp_path)
    code, out, err = run(capsys, "--after", "no_such_pass", script)
    assert code == 2 and out == ""
    assert "no_such_pass" in err and "input" in err and "autodiff" in err
    assert "SCRIPT-OUTPUT" not in err  # the script did not run


def test_script_exit_code_is_passed_on_after_printing_the_graphs(tmp_path, capsys):
    script = write(tmp_path, tail="sys.exit(3)\n")
    code, out, err = run(capsys, script)
    assert code == 3
    assert len(chunks(out)) == 2


def test_script_exception_exits_1_and_reports_it(tmp_path, capsys):
    script = write(tmp_path, tail="raise RuntimeError('boom in the script')\n")
    code, out, err = run(capsys, script)
    assert code == 1
    assert "boom in the script" in err and "Traceback" in err
    assert len(chunks(out)) == 2


def test_sys_exit_zero_is_success(tmp_path, capsys):
    script = write(tmp_path, tail="sys.exit(0)\n")
    code, out, _ = run(capsys, script)
    assert code == 0 and len(chunks(out)) == 2


def test_no_graph_compiled_exits_1(tmp_path, capsys):
    path = tmp_path / "plain.py"
    path.write_text("print('nothing compiled here')\n")
    code, out, err = run(capsys, str(path))
    assert code == 1 and out == ""
    assert "nothing compiled here" in err and "compiled no graph" in err
    assert "no @needle.compile function was called" in err


def test_a_compiled_function_that_fails_to_compile_is_not_reported_as_never_called(tmp_path, capsys):
    path = tmp_path / "fails.py"
    path.write_text("import needle as ndl\n"
                    "f = ndl.compile(lambda x: float(x.sum()))  # reads a traced value: TraceError\n"
                    "f(ndl.init.randn(3))\n")
    code, out, err = run(capsys, str(path))
    assert code != 0 and out == ""
    assert "TraceError" in err and "were called but compiled no graph" in err


def test_script_directory_is_first_on_sys_path(tmp_path, capsys):
    (tmp_path / "helper_mod_for_needle_ir.py").write_text("VALUE = 41\n")
    script = write(tmp_path, tail="import helper_mod_for_needle_ir\nprint('HELPER', helper_mod_for_needle_ir.VALUE + 1)\n")
    saved = list(sys.path)
    code, out, err = run(capsys, script)
    assert code == 0 and "HELPER 42" in err
    assert sys.path == saved


def test_subprocess(tmp_path):
    script = write(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "needle.cli.needle_ir", "--after", "input", script, "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SCRIPT-OUTPUT ['x']" in proc.stderr and "SCRIPT-OUTPUT" not in proc.stdout
    parts = chunks(proc.stdout)
    assert [q for q, _, _, _ in parts] == ["forward", "make_step.<locals>.loss_and_grads"]
    assert "= grad(" in parts[1][3]
    for _, _, _, body in parts:
        parse_graph(body)
        assert f"{script}:" in body


# ---- generated code: --format c|llvm, --why-not-fused ---------------------------------------
KERNEL_SCRIPT = """
import numpy as np
import needle as ndl
from needle import ops


@ndl.compile
def gelu(x):
    return 0.5 * x * (1.0 + ops.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))


@ndl.compile
def softmax(x):  # over the columns: two reductions of outer axes, two kernels
    m = ops.broadcast_to(ops.reshape(ops.max(x, axes=(0,)), (1, 16)), x.shape)
    e = ops.exp(x - m)
    s = ops.broadcast_to(ops.reshape(ops.summation(e, axes=(0,)), (1, 16)), x.shape)
    return e / s


x = ndl.Tensor(np.random.randn(4, 16).astype("float32"))
gelu(x)
softmax(x)
"""
KERNEL_HEAD = re.compile(r"^# kernel k(\d+) \[(elementwise|reduce)\] nodes( %\d+)+$", re.M)
INTERP_LINE = re.compile(r"^# k(\d+) \[(\w+)\] runs (?:on the interpreter|natively): .+$", re.M)


def write_kernels(tmp_path):
    path = tmp_path / "kernels_tiny.py"
    path.write_text(textwrap.dedent(KERNEL_SCRIPT))
    return str(path)


def kernel_bodies(body):
    """[(group id, code)] for the generated kernels of one graph's --format c|llvm output."""
    heads = list(KERNEL_HEAD.finditer(body))
    return [(int(m.group(1)), body[m.end() + 1:nxt.start() if nxt else len(body)])
            for m, nxt in zip(heads, heads[1:] + [None])]


def group_ids(body):
    """Group ids in output order, from both the kernel headers and the interpreter lines."""
    found = [(m.start(), int(m.group(1))) for m in KERNEL_HEAD.finditer(body)]
    found += [(m.start(), int(m.group(1))) for m in INTERP_LINE.finditer(body)]
    return [gid for _, gid in sorted(found)]


def test_format_c_prints_each_generated_kernel(tmp_path, capsys):
    script = write_kernels(tmp_path)
    code, out, err = run(capsys, "--format", "c", script)
    assert code == 0, err
    parts = {q: body for q, _, _, body in chunks(out)}
    assert set(parts) == {"gelu", "softmax"}
    (gelu,) = kernel_bodies(parts["gelu"])           # GELU chain: one fused kernel
    assert gelu[0] == 0 and "for (" in gelu[1] and "tanh" in gelu[1]
    assert KERNEL_HEAD.search(parts["gelu"]).group(0).startswith("# kernel k0 [elementwise] nodes %")
    soft = kernel_bodies(parts["softmax"])
    assert 1 <= len(soft) <= 2
    assert all("for (" in c and "void kernel(" in c for _, c in soft)
    assert "exp" in parts["softmax"]
    # every group of the plan appears once, in plan order
    assert group_ids(parts["softmax"]) == list(range(len(group_ids(parts["softmax"]))))


def test_format_llvm_prints_parseable_modules(tmp_path, capsys):
    import llvmlite.binding as llvm

    script = write_kernels(tmp_path)
    code, out, err = run(capsys, "--format", "llvm", "--function", "gelu", script)
    assert code == 0, err
    ((_, _, _, body),) = chunks(out)
    ((gid, module),) = kernel_bodies(body)
    assert gid == 0 and "define " in module and "<8 x float>" in module
    llvm.parse_assembly(module).verify()             # the unoptimised module, as printed


@pytest.mark.parametrize("executor", ["native", "kernels"])
def test_format_c_marks_groups_that_are_not_generated_kernels(tmp_path, capsys, monkeypatch, executor):
    """GEMMs run as native BLAS steps on the default executor, on the interpreter under the
    kernel executor: the line says which."""
    from needle.backend_selection import BACKEND

    if executor == "native" and BACKEND != "nd":
        pytest.skip("the native executor runs on the nd backend")
    monkeypatch.setenv("NEEDLE_EXECUTOR", executor)
    script = write(tmp_path)                         # Linear/ReLU/SoftmaxLoss: GEMMs, views
    code, out, err = run(capsys, "--format", "c", "--function", "loss_and_grads", script)
    assert code == 0, err
    ((_, _, _, body),) = chunks(out)
    lines = INTERP_LINE.findall(body)
    assert any(kind == "extern" for _, kind in lines)
    expected = ("runs natively: extern MatMul" if executor == "native"
                else "runs on the interpreter: extern MatMul")
    assert expected in body
    ids = group_ids(body)
    assert ids == list(range(len(ids))) and kernel_bodies(body)


def test_why_not_fused_lists_groups_and_refusals(tmp_path, capsys):
    script = write_kernels(tmp_path)
    code, out, err = run(capsys, "--why-not-fused", script)
    assert code == 0, err
    parts = {q: body for q, _, _, body in chunks(out)}
    assert re.fullmatch(r"k0 \[elementwise\]: (%\d+ )+<- ins %0 -> outs %\d+\n", parts["gelu"])
    lines = parts["softmax"].splitlines()
    groups = [line for line in lines if re.match(r"k\d+ \[\w+( @\d+)?\]: ", line)]
    why = [line for line in lines if line.startswith("why-not ")]
    assert 1 <= len(groups) <= 2 and lines == groups + why
    assert any("Max" in line and "reduc" in line for line in why), why


def test_why_not_fused_refuses_other_formats(tmp_path, capsys):
    script = write_kernels(tmp_path)
    code, out, err = run(capsys, "--why-not-fused", "--format", "c", script)
    assert code == 2 and out == "" and "--why-not-fused" in err


def test_text_format_of_the_kernel_script_parses_back(tmp_path, capsys):
    from needle.ir import parse_graphs

    script = write_kernels(tmp_path)
    code, out, err = run(capsys, script)
    assert code == 0, err
    graphs = parse_graphs(out)
    assert [g.name for g in graphs] == ["gelu", "softmax"]
