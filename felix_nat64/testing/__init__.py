"""Stream builders and scenario files: what the product's own `render` and
`stream` commands need at runtime. The tests' fakes live in tests/fakes.py."""
