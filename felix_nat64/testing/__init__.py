"""Stream builders and scenario files the product's own `render` and `stream` commands use."""
