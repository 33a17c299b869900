"""Model formats: how to make each one and how to run it, behind one interface."""
