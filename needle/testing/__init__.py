"""Testing helpers that ship with needle (the differential fuzzer of `needle.compile`)."""
