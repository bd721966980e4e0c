"""A crafted pickle for the tests that show checkpoints load without running code."""

import os
import shlex


class Payload:
    """Unpickling this runs a shell command that creates `target` (what a crafted state.pt did)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.target))}",)
