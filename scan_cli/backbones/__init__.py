"""The backbone plugin surface: the versioned contract, the registry that finds providers through
entry points, what every model build verifies, the built-in providers, and user-supplied weights."""
