"""The HTTP API: routes, auth, error model and the ``reelhouse`` command."""
