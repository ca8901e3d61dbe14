"""Stream builders and scenario files the product's own `render` and `stream`
commands use, and the fakes (a recording dataplane, a manual clock) that the
tests of the loop and the CLI share."""
