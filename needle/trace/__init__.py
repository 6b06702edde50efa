"""Tracing Python into graph IR: the per-thread graph builder that ops append to while a
function is traced (`tracer`), and `grad` requests recorded by `backward()` in a trace
(`autodiff_request`). `needle.compile` drives it; `needle.ir` knows nothing of it."""
