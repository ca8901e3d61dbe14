"""felix-nat64's model: settings, state and the pure desired-state calculation."""
