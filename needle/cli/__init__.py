"""The command-line tools: ``needle-train`` (`train`), ``needle-ir`` (`needle_ir`) and the
compile fuzzer (`fuzz_compile`, ``python -m needle.cli.fuzz_compile``)."""
