"""What a traced function reads and writes outside its arguments: the objects it can reach
(`roots`), the tensors held in their attributes, dict and list entries, globals and closure
cells (`state_snapshot`, each a *slot*), the slots a trace reassigned (`take_slot_updates`),
and the object a graph input's binding names at each call (`resolve_binding`)."""
from __future__ import annotations

import types

import numpy as np

from .. import autograd
from .tracer import GraphBuilder


def roots(fn, args=(), kwargs=None) -> list:
    """(name, object) for what a function can reach: arguments, closure cells, globals it
    names, and the bound instance of a method."""
    roots = [(f"arg{i}", a) for i, a in enumerate(args)] + list((kwargs or {}).items())
    code = getattr(fn, "__code__", None)
    for name, cell in zip(code.co_freevars if code else (), getattr(fn, "__closure__", None) or ()):
        try:
            roots.append((name, cell.cell_contents))
        except ValueError:
            continue
    fn_globals = getattr(fn, "__globals__", {})
    roots += [(n, fn_globals[n]) for n in (code.co_names if code else ()) if n in fn_globals]
    bound = getattr(fn, "__self__", None)
    if bound is not None:
        roots.append(("self", bound))
    return roots


def optimizers(obj) -> list:
    return [obj] if hasattr(obj, "params") and hasattr(obj, "_buffer_names") else []


def state_snapshot(roots: list, named: list = ()) -> tuple[dict, list, dict]:
    """What a trace can read outside its arguments:
    * slots: {(id(holder), key): (holder, key, tensor, path)} for each attribute, dict or list
      entry, global or closure variable holding a Tensor (path like `model.modules[0].weight`);
    * the modules and optimizers found on the way;
    * objects: {id(obj): (obj, path)} of the objects whose attributes a trace may read."""
    snapshot: dict = {}
    stateful: list = []
    objects: dict = {}
    seen: set = set()

    def visit(obj, depth, path):
        if depth > 64 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple, dict)):
            for key, item in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
                if isinstance(item, autograd.Value) and not isinstance(obj, tuple):
                    snapshot[(id(obj), key)] = (obj, key, item, f"{path}[{key!r}]")
                visit(item, depth + 1, f"{path}[{key!r}]")
        elif is_state_holder(obj):
            objects[id(obj)] = (obj, path)
            if optimizers(obj) or (hasattr(obj, "training") and hasattr(obj, "_children")):
                stateful.append(obj)
            for key, item in list(vars(obj).items()):
                if isinstance(item, autograd.Value):
                    snapshot[(id(obj), key)] = (obj, key, item, f"{path}.{key}")
                else:
                    visit(item, depth + 1, f"{path}.{key}")

    for label, guard, holder, key in named:  # globals and closure variables holding tensors
        if isinstance(guard.value, autograd.Value):
            snapshot[(id(holder), key)] = (holder, key, guard.value, label.split("`")[1])
    for name, root in roots:
        visit(root, 0, name)
    return snapshot, stateful, objects


def take_new_traced_entries(roots: list, named: list, snapshot: dict) -> list:
    """Remove dict entries and attributes that the trace created holding traced values; name them."""
    current = state_snapshot(roots, named)[0]
    created = []
    for key, (obj, name, value, path) in current.items():
        if key not in snapshot and value._trace is not None:
            created.append(path)
            if isinstance(obj, dict):
                del obj[name]
            elif isinstance(obj, list):
                obj[name] = None
            else:
                delattr(obj, name)
    return created


def is_state_holder(obj) -> bool:
    """Objects whose attributes may hold tensors: instances of user or needle classes
    (modules, optimizers, training jobs), not modules, functions, classes or arrays."""
    if isinstance(obj, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type,
                        np.ndarray, str, bytes, autograd.Value)):
        return False
    return hasattr(obj, "__dict__") and type(obj).__module__ not in ("builtins", "numpy")


def get_slot(holder, key):
    """holder[key] for a dict or list, else the attribute (a cell's `cell_contents` too)."""
    return holder[key] if isinstance(holder, (dict, list)) else getattr(holder, key)


def set_slot(holder, key, value) -> None:
    if isinstance(holder, (dict, list)):
        holder[key] = value
    else:
        setattr(holder, key, value)


def take_slot_updates(snapshot: dict) -> list:
    """(holder, key, traced value) for every snapshotted slot the trace reassigned; each
    slot gets its old tensor back (the compiled call writes the new value after running)."""
    updates = []
    for obj, key, old, _ in snapshot.values():
        try:
            current = get_slot(obj, key)
        except (AttributeError, KeyError, IndexError, ValueError):
            continue
        if current is not old and isinstance(current, autograd.Value) and current._trace is not None:
            updates.append((obj, key, current))
            set_slot(obj, key, old)
    return updates


def bindings_by_tensor(builder: GraphBuilder) -> dict:
    """{id(tensor): binding of the graph input standing for it} for the tensors a trace read."""
    by_node = {nid: bound for nid, bound, _ in builder.inputs}
    return {key: by_node[proxy._trace.node_id] for key, (_, proxy) in builder.lifted.items()
            if proxy._trace.node_id in by_node}


def resolve_binding(binding: tuple, args: tuple, kwargs: dict):
    """The object a tensor binding names at this call."""
    kind = binding[0]
    if kind == "arg":
        return args[binding[1]]
    if kind == "kwarg":
        return kwargs[binding[1]]
    if kind == "slot":
        try:
            return get_slot(binding[1], binding[2])
        except (AttributeError, KeyError, IndexError, ValueError):
            return None
    return binding[1]
