"""Felix's dataplane wire protocol: framing, decoding and transports."""
