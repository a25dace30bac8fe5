"""The orch node agent: registers its node, runs the pods bound to it, reports their status."""
