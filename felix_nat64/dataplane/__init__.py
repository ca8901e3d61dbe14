"""The driver's loop: fold Felix's messages, gate on InSync, apply, retry."""
